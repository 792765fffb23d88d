# cc-firewall: which firewall owns the host's rules. firewalld, as upstream Chameleon's images
# have it, except where the distribution's cloud-init refuses to be installed beside it:
# Debian 13's cloud-init (25.1) declares `Conflicts: firewalld`, so trixie and later Debian
# releases get the same policy (SSH only) as a native nftables ruleset instead. Sorted after
# the operating-system element's 10-* file, which sets DISTRO_NAME and DIB_RELEASE.

if [ -z "${CC_FIREWALL:-}" ]; then
    case "${DISTRO_NAME:-}:${DIB_RELEASE:-}" in
        debian:trixie|debian:forky|debian:sid)
            CC_FIREWALL=nftables
            ;;
        *)
            CC_FIREWALL=firewalld
            ;;
    esac
fi
export CC_FIREWALL
case "${CC_FIREWALL}" in
    firewalld|nftables)
        ;;
    *)
        echo "cc-firewall: unknown CC_FIREWALL '${CC_FIREWALL}' (supported: firewalld, nftables)" >&2
        exit 1
        ;;
esac
