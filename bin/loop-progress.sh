# shellcheck shell=bash
# Source me: report a script's progress to the loop sidecar in one line each.
#
#   source bin/loop-progress.sh
#   loop_task_start "Nightly build" 3
#   loop_story_start build "Compile" "compiles" "no warnings"
#   loop_ac_done build 0 "compiles"
#   loop_story_done build passed
#   loop_progress 40 "halfway"
#   loop_task_done
#
# What a caller can rely on:
# - Every function returns at once: the event goes to a spool file and a detached shipper delivers
#   it (bin/loop-emit), in order, whether the sidecar is up, slow, rate-limiting, hung or down, also
#   after this script has exited.
# - Nothing here exits or changes the calling shell: no set -e/-u, every variable local, no traps.
#   The one variable it may set is LOOP_RUN (exported by loop_task_start when unset), so that every
#   later call reports to the same run.
# - A usage mistake (a missing or non-numeric argument) prints one line on stderr, queues nothing and
#   returns 2 — or 0 when the caller runs under `set -e`, so that a typo in a progress call cannot end
#   the work. Anything the sidecar does returns 0, unless LOOP_STRICT=1.

# loop_emit TYPE [KEY=TEXT | KEY:=JSON | KEY[]=TEXT]...  (bin/loop-emit, by the absolute path
# resolved now, so a later cd in the caller does not break it; no variable is left behind)
eval "loop_emit() { $(printf '%q' "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/loop-emit") \"\$@\" || _loop_status \$?; }"

# _loop_status CODE: a usage mistake (2) returns 0 under `set -e`; other failures (LOOP_STRICT=1) stay.
_loop_status() {
  if [ "$1" = 2 ]; then
    case $- in *e*) return 0 ;; esac
  fi
  return "$1"
}

# _loop_usage FUNCTION USAGE: one line on stderr; the status a usage mistake returns.
_loop_usage() {
  echo "$1: usage: $1 $2" >&2
  case $- in
    *e*) return 0 ;;
    *) return 2 ;;
  esac
}

# _loop_int VALUE: is it a whole number?
_loop_int() {
  [[ $1 =~ ^-?(0|[1-9][0-9]*)$ ]]
}

_loop_number() {
  [[ $1 =~ ^-?(0|[1-9][0-9]*)(\.[0-9]+)?$ ]]
}

loop_task_start() {  # NAME [STORY_COUNT]
  local name=${1:-task} count=${2:-}
  if [ -n "$count" ] && ! _loop_int "$count"; then
    _loop_usage loop_task_start "NAME [STORY_COUNT] (a whole number)"
    return
  fi
  if [ -z "${LOOP_RUN:-}" ]; then
    LOOP_RUN="script-$(date +%Y%m%d-%H%M%S)-$$"
    export LOOP_RUN
  fi
  if [ -n "$count" ]; then
    loop_emit task_started task_name="$name" story_count:="$count"
  else
    loop_emit task_started task_name="$name"
  fi
}

loop_story_start() {  # ID TITLE [CRITERION...]
  if [ -z "${1:-}" ]; then
    _loop_usage loop_story_start "ID TITLE [CRITERION...]"
    return
  fi
  local id=$1 title=${2:-} c
  local -a items=()
  shift 2 2>/dev/null || shift $#
  for c in "$@"; do
    items+=("acceptance_criteria[]=$c")
  done
  [ $# -gt 0 ] || items=("acceptance_criteria:=[]")
  loop_emit story_started story_id="$id" title="$title" "${items[@]}"
}

loop_ac_done() {  # STORY_ID INDEX [TEXT]
  if [ -z "${1:-}" ] || ! _loop_int "${2:-}"; then
    _loop_usage loop_ac_done "STORY_ID INDEX [TEXT]"
    return
  fi
  loop_emit ac_completed story_id="$1" ac_index:="$2" ac_text="${3:-}"
}

loop_ac_fail() {  # STORY_ID INDEX [TEXT] [ERROR]
  if [ -z "${1:-}" ] || ! _loop_int "${2:-}"; then
    _loop_usage loop_ac_fail "STORY_ID INDEX [TEXT] [ERROR]"
    return
  fi
  loop_emit ac_failed story_id="$1" ac_index:="$2" ac_text="${3:-}" error="${4:-failed}"
}

loop_story_done() {  # ID [STATUS] [DURATION_MS]
  if [ -z "${1:-}" ] || { [ -n "${3:-}" ] && ! _loop_int "$3"; }; then
    _loop_usage loop_story_done "ID [STATUS] [DURATION_MS]"
    return
  fi
  if [ -n "${3:-}" ]; then
    loop_emit story_completed story_id="$1" status="${2:-passed}" duration_ms:="$3"
  else
    loop_emit story_completed story_id="$1" status="${2:-passed}"
  fi
}

loop_progress() {  # PERCENT [MESSAGE]
  if ! _loop_number "${1:-}"; then
    _loop_usage loop_progress "PERCENT [MESSAGE]"
    return
  fi
  loop_emit progress percent:="$1" message="${2:-}"
}

loop_error() {  # TYPE MESSAGE [RETRYABLE true|false]
  case ${3:-false} in
    true|false) ;;
    *) _loop_usage loop_error "TYPE MESSAGE [RETRYABLE true|false]"; return ;;
  esac
  loop_emit error_occurred error_type="${1:-error}" error_message="${2:-}" retryable:="${3:-false}"
}

loop_output() {  # TEXT [STREAM]
  loop_emit output text="${1:-}" stream="${2:-stdout}"
}

loop_task_done() {  # [STATUS]
  if [ -n "${1:-}" ]; then
    loop_emit task_completed status="$1"
  else
    loop_emit task_completed
  fi
}
