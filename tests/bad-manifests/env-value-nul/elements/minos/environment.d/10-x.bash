export DISTRO_NAME=debian
