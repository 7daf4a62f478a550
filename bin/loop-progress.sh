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
# Changes nothing in the calling shell: no set -e/-u, every variable local, and a
# function returns (never exits) — 0 even when the sidecar is down, unless LOOP_STRICT=1.
# The one variable it may set is LOOP_RUN (exported by loop_task_start when unset),
# so that every later call reports to the same run.

# loop_emit TYPE [KEY=TEXT | KEY:=JSON | KEY[]=TEXT]...  (bin/loop-emit, by the absolute path
# resolved now, so a later cd in the caller does not break it; no variable is left behind)
eval "loop_emit() { $(printf '%q' "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/loop-emit") \"\$@\"; }"

loop_task_start() {  # NAME [STORY_COUNT]
  local name=${1:-task} count=${2:-}
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
  local id=${1:?story id} title=${2:-} c
  local -a items=()
  shift 2 2>/dev/null || shift $#
  for c in "$@"; do
    items+=("acceptance_criteria[]=$c")
  done
  [ $# -gt 0 ] || items=("acceptance_criteria:=[]")
  loop_emit story_started story_id="$id" title="$title" "${items[@]}"
}

loop_ac_done() {  # STORY_ID INDEX [TEXT]
  loop_emit ac_completed story_id="${1:?story id}" ac_index:="${2:?criterion index}" ac_text="${3:-}"
}

loop_ac_fail() {  # STORY_ID INDEX [TEXT] [ERROR]
  loop_emit ac_failed story_id="${1:?story id}" ac_index:="${2:?criterion index}" ac_text="${3:-}" \
    error="${4:-failed}"
}

loop_story_done() {  # ID [STATUS] [DURATION_MS]
  local status=${2:-passed}
  if [ -n "${3:-}" ]; then
    loop_emit story_completed story_id="${1:?story id}" status="$status" duration_ms:="$3"
  else
    loop_emit story_completed story_id="${1:?story id}" status="$status"
  fi
}

loop_progress() {  # PERCENT [MESSAGE]
  loop_emit progress percent:="${1:?percent}" message="${2:-}"
}

loop_error() {  # TYPE MESSAGE [RETRYABLE true|false]
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
