#!/usr/bin/env bash
# Sourced by the native stack's scripts (make up / dku / down): loads the settings file
# of a native install, the same one mvp_core/config.py reads, so every shell agrees.
#   KETTER_ENV_FILE   the file (KETTER_X=value lines, # comments); default
#                     /etc/ketter/ketter.env when it exists, else none (environment only)
# Variables already set in the environment win over the file, as in mvp_core/config.py.
# A named file that is missing or unreadable is one error line and exit status 2.

ketter_load_env() {
  local file="${KETTER_ENV_FILE:-}" line name value
  if [ -z "$file" ]; then
    [ -e /etc/ketter/ketter.env ] || return 0
    file=/etc/ketter/ketter.env
  fi
  if [ ! -f "$file" ] || [ ! -r "$file" ]; then
    local why="no such file"
    [ -e "$file" ] && why="not a readable file"
    echo "ketter: settings file ${KETTER_ENV_FILE:+KETTER_ENV_FILE=}$file: $why" >&2
    return 2
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"          # leading blanks
    line="${line#export }"
    [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue   # comments, blanks
    name="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
    if [[ "$value" =~ ^\"(.*)\"[[:space:]]*$ ]] || [[ "$value" =~ ^\'(.*)\'[[:space:]]*$ ]]; then
      value="${BASH_REMATCH[1]}"
    else
      value="${value%%[[:space:]]#*}"                 # an unquoted value's " # comment"
      value="${value%"${value##*[![:space:]]}"}"      # trailing blanks
    fi
    [ -n "${!name:-}" ] && continue                   # the environment wins (empty = unset)
    export "$name=$value"
  done < "$file"
  export KETTER_ENV_FILE="$file"
}
