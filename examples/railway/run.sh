#!/bin/sh
# Runs the app locally the way Railway does: the variables from
# variables.env, then the start command. Open http://localhost:8080.
cd "$(dirname "$0")" || exit 1
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    export "${line%%=*}=${line#*=}"
done < variables.env
exec switchyard
