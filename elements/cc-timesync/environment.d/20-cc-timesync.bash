# cc-timesync: extra NTP servers are site configuration, set from the
# manifest environment. Empty means only the distribution's sources.

export CC_EXTRA_NTP_SERVERS="${CC_EXTRA_NTP_SERVERS:-}"
