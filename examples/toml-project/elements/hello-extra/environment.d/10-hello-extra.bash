# hello-extra: the greeting appended to /etc/motd.

export HELLO_GREETING="${HELLO_GREETING:-Hello!}"
