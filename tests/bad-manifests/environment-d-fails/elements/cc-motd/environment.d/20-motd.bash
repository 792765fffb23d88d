# reads a variable nobody sets
export MOTD_TEXT="${CC_MOTD_BANNER}"
