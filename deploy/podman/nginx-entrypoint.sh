#!/bin/sh
# The nginx image's template step (docker-entrypoint.d/20-envsubst-on-templates.sh), for Debian's nginx:
# /etc/nginx/templates/X.template becomes /etc/nginx/conf.d/X, with only the ${VARIABLES} whose names match
# NGINX_ENVSUBST_FILTER replaced, so that nginx's own $variables stay.
#
# One difference, because nginx 1.22 has no `resolve` on an upstream server (open-source nginx 1.27.3+):
# the shipped upstream file is read with " resolve" dropped from its two server lines. nginx then resolves
# icseg-api once, at start, to every replica up at that moment, instead of every 5 s.
set -eu
filter="${NGINX_ENVSUBST_FILTER:-}"
vars=$(env | cut -d= -f1 | grep -E "${filter:-.}" | sed 's/^/${/; s/$/}/' | tr '\n' ' ')
mkdir -p /etc/nginx/conf.d
for template in /etc/nginx/templates/*.template; do
  [ -e "$template" ] || continue
  out="/etc/nginx/conf.d/$(basename "$template" .template)"
  envsubst "$vars" < "$template" > "$out"
  if [ -e /etc/nginx/icseg/upstream.conf ]; then
    mkdir -p /etc/nginx/icseg-1.22
    sed -e 's/ resolve;$/;/' /etc/nginx/icseg/upstream.conf > /etc/nginx/icseg-1.22/upstream.conf
    sed -i 's#include /etc/nginx/icseg/upstream.conf;#include /etc/nginx/icseg-1.22/upstream.conf;#' "$out"
  fi
done
exec "$@"
