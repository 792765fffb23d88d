# cc-ubuntu24.04-rocm: extend the bootloader's default kernel command line.
# Sorted after bootloader's 10-bootloader-defaults.bash, which set the base
# value. Idempotent: sourcing this again never appends twice.

_cc_rocm_cmdline="${DIB_BOOTLOADER_DEFAULT_CMDLINE:-}"
if [ -n "${CC_ROCM_KERNEL_CMDLINE:-}" ]; then
    case " ${_cc_rocm_cmdline} " in
        *" ${CC_ROCM_KERNEL_CMDLINE} "*)
            ;;
        *)
            _cc_rocm_cmdline="${_cc_rocm_cmdline:+${_cc_rocm_cmdline} }${CC_ROCM_KERNEL_CMDLINE}"
            ;;
    esac
fi
export DIB_BOOTLOADER_DEFAULT_CMDLINE="${_cc_rocm_cmdline}"
unset _cc_rocm_cmdline
