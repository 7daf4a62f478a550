#!/usr/bin/env bash
# A plain shell script that reports its progress to the loop sidecar.
# Watch it with `loop watch` or the dashboard while it runs:
#     loop serve &            # or let `loop run` start one
#     examples/nightly-build.sh
# If the sidecar is down the script runs exactly the same (the hooks warn and go on).
set -euo pipefail
source "$(dirname "$0")/../bin/loop-progress.sh"

loop_task_start "Nightly build" 3

loop_story_start fetch "Fetch sources" "repository is up to date"
for i in 1 2 3; do loop_output "fetching part $i/3"$'\n'; sleep 0.3; done
loop_ac_done fetch 0 "repository is up to date"
loop_story_done fetch passed

loop_story_start build "Build" "compiles" "no warnings"
for pct in 20 40 60 80 100; do loop_progress "$pct" "compiling"; sleep 0.3; done
loop_ac_done build 0 "compiles"
loop_ac_fail build 1 "no warnings" "2 deprecation warnings"
loop_story_done build failed

loop_story_start publish "Publish" "artifact uploaded"
loop_error upload_failed "registry answered 503" true
loop_story_done publish failed

loop_task_done
