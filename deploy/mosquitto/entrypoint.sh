#!/bin/sh
# Entrypoint of the compose `mosquitto` service (eclipse-mosquitto 2.0, runs as root):
# puts the configuration in place, writes the password file from the environment,
# then runs the command given (mosquitto, which drops to the `mosquitto` user).
#
#   MQTT_PLATFORM_PASSWORD   password of the user `cityvitals` (the platform)
#   MQTT_SIMULATOR_PASSWORD  password of the user `simulator` (the simulated fleet)
#
# The password file is rebuilt at every start, so a changed .env takes effect on
# `docker compose up -d`; passwords are never written to the repository.
# MOSQUITTO_CONFIG_DIR and MOSQUITTO_DATA_DIR exist for the tests, which run this
# script against a local broker (tests/integration/test_mosquitto_acl.py).
set -eu

template_dir=$(dirname "$0")
config_dir=${MOSQUITTO_CONFIG_DIR:-/mosquitto/config}
data_dir=${MOSQUITTO_DATA_DIR:-/mosquitto/data}

: "${MQTT_PLATFORM_PASSWORD:?is not set: copy .env.example to .env and set it}"
: "${MQTT_SIMULATOR_PASSWORD:?is not set: copy .env.example to .env and set it}"

umask 077
mkdir -p "$config_dir" "$data_dir"
cp "$template_dir/mosquitto.conf" "$config_dir/mosquitto.conf"
cp "$template_dir/acl" "$config_dir/acl"

passwd_new="$config_dir/passwd.new"
rm -f "$passwd_new"
mosquitto_passwd -c -b "$passwd_new" cityvitals "$MQTT_PLATFORM_PASSWORD"
mosquitto_passwd -b "$passwd_new" simulator "$MQTT_SIMULATOR_PASSWORD"
mv -f "$passwd_new" "$config_dir/passwd"

if [ "$(id -u)" = 0 ]; then
    # Mosquitto reads the ACL and password file after dropping to its own user,
    # and wants them readable by that user alone; its data must be writable.
    chown mosquitto:mosquitto "$config_dir" "$config_dir/mosquitto.conf" "$config_dir/acl" "$config_dir/passwd"
    chown -R mosquitto:mosquitto "$data_dir"
fi
chmod 0600 "$config_dir/mosquitto.conf" "$config_dir/acl" "$config_dir/passwd"

exec "$@"
