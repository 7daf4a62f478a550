// Every name a dashboard module imports is exported where it is imported from. app.js runs on import
// (it needs a page), so node cannot load it: a misspelt or moved name would only show as a blank page
// in Chromium. Its import lines are read here instead, and every other module is loaded for real.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";

const dir = new URL("../../dashboard/", import.meta.url);
const modules = readdirSync(dir).filter((f) => f.endsWith(".js"));
const IMPORT = /^import\s*\{([^}]*)\}\s*from\s*"\.\/([\w.]+)";/gm;

test("the dashboard's modules import only what their modules export", async () => {
  const checked = [];
  for (const file of modules) {
    for (const [, names, from] of readFileSync(new URL(file, dir), "utf8").matchAll(IMPORT)) {
      assert.ok(modules.includes(from), `${file} imports ./${from}, which is not in dashboard/`);
      const exported = await import(new URL(from, dir));
      for (const name of names.split(",").map((x) => x.trim().split(/\s+as\s+/)[0]).filter(Boolean)) {
        assert.ok(name in exported, `${file} imports ${name} from ./${from}, which does not export it`);
        checked.push(`${file}:${name}`);
      }
    }
  }
  assert.ok(checked.includes("app.js:pickOnLoad") && checked.includes("app.js:SharedStream"), checked.join(" "));
});
