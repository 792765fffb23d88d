# cc-snapshot: where the cc-snapshot tool comes from. A path to a file the
# engine fetched from the pinned source declared in the manifests (ccb.lock).

export CC_SNAPSHOT_SOURCE="${CC_SNAPSHOT_SOURCE:-}"
