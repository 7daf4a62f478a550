#!/usr/bin/env bash
# Install the real agent CLIs the agent tests drive (offline, against tests/agents/standin.py) into a
# cache directory that is an npm prefix, at pinned versions. Idempotent: nothing is fetched when the
# pinned versions are already there.
#   tests/agents/install-clis.sh [DIR]      DIR defaults to $LOOP_TEST_AGENTS_DIR, then ~/.cache/loop-test-agents
# Needs node and npm (the npm registry); about 900 MB (each CLI ships a native build).
# The pins are the same as PACKAGES in tests/agents/clis.py.
set -euo pipefail

dir="${1:-${LOOP_TEST_AGENTS_DIR:-$HOME/.cache/loop-test-agents}}"
pins=(
  "@anthropic-ai/claude-code@2.1.332"
  "@openai/codex@0.171.0"
  "@google/gemini-cli@0.61.0"
)

installed() {  # PACKAGE@VERSION -> is that version in $dir?
  local spec="$1" name version
  name="${spec%@*}"
  version="${spec##*@}"
  [ -f "$dir/node_modules/$name/package.json" ] \
    && node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
         "$dir/node_modules/$name/package.json" "$version"
}

need=()
for spec in "${pins[@]}"; do
  installed "$spec" || need+=("$spec")
done

if ((${#need[@]})); then
  command -v npm >/dev/null 2>&1 || { echo "install-clis: npm is needed (Debian: nodejs, npm)" >&2; exit 1; }
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name": "loop-test-agents", "private": true}' >"$dir/package.json"
  # All three in one call, so that npm keeps each of them (a later install of one would not drop the others).
  npm install --prefix "$dir" --save-exact --no-fund --no-audit --loglevel=error "${pins[@]}" >&2
fi

# Claude Code's package swaps its bin/claude.exe stub for the native build in a postinstall; when npm
# skipped install scripts, do that step here.
claude_pkg="$dir/node_modules/@anthropic-ai/claude-code"
if ! "$dir/node_modules/.bin/claude" --version >/dev/null 2>&1; then
  (cd "$claude_pkg" && node install.cjs >&2)
fi

if ((${#need[@]})); then
  for cli in claude codex gemini; do
    "$dir/node_modules/.bin/$cli" --version >/dev/null 2>&1 || { echo "install-clis: $cli does not start" >&2; exit 1; }
  done
fi
echo "$dir/node_modules/.bin"
