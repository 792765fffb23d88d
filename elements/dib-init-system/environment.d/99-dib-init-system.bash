# dib-init-system: the operating-system element must name a known init system.
# Sorted last so that every operating-system element has run; an unknown or
# missing value stops the phase.

case "${DIB_INIT_SYSTEM:-}" in
    systemd|upstart|openrc|sysv)
        ;;
    "")
        echo "dib-init-system: DIB_INIT_SYSTEM is not set; the operating-system element must export it" >&2
        exit 1
        ;;
    *)
        echo "dib-init-system: unknown DIB_INIT_SYSTEM '${DIB_INIT_SYSTEM}' (expected systemd, upstart, openrc or sysv)" >&2
        exit 1
        ;;
esac
