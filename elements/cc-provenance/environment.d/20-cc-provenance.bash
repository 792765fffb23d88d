# cc-provenance: the provenance JSON object is computed by the engine for each
# build (repository, commit, timestamp, ...). Empty here; the element's
# finalise step refuses to build an image without it.

export DIB_CC_PROVENANCE="${DIB_CC_PROVENANCE:-}"
