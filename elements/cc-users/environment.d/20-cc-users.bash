# cc-users: Chameleon's admin SSH public key is configuration (manifest
# environment), not code. Empty means ccadmin gets no authorized key.

export CC_ADMIN_SSH_KEY="${CC_ADMIN_SSH_KEY:-}"
