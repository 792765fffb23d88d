# cc-motd: Chameleon's message of the day, once per session, in interactive login shells only
# (never in scp, rsync or `ssh host command`, whose output it would corrupt). The parts are
# sourced in name order; they `return` rather than `exit`.
case $- in
    *i*)
        if [ -z "${CC_MOTD_SHOWN:-}" ] && [ -d /etc/custom-motd ]; then
            CC_MOTD_SHOWN=1
            export CC_MOTD_SHOWN
            for cc_motd_part in /etc/custom-motd/*; do
                [ -r "$cc_motd_part" ] && . "$cc_motd_part"
            done
            unset cc_motd_part
            echo
        fi
        ;;
esac
