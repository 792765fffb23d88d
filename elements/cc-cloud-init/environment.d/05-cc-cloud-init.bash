# cc-cloud-init: Chameleon sites serve configuration (and the dynamic
# vendordata the cc-* helpers read) through the OpenStack metadata service and
# config drives. Sorted before the operating-system elements (10-*) so that
# this default wins over ubuntu's Ec2; the manifest may still override it.

export DIB_CLOUD_INIT_DATASOURCES="${DIB_CLOUD_INIT_DATASOURCES:-ConfigDrive, OpenStack}"
