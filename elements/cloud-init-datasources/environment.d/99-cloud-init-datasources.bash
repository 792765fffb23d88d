# cloud-init-datasources: which cloud-init datasources the image probes.
# Sorted last so that operating-system and image elements can choose first.

export DIB_CLOUD_INIT_DATASOURCES="${DIB_CLOUD_INIT_DATASOURCES:-ConfigDrive, OpenStack}"
