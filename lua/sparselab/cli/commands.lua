-- sparselab.cli.commands — one declaration per subcommand of the `sparselab` program: its
-- arguments, a one-line summary, every option (name, kind, value name, one-line doc) and
-- optional notes. The option parser of sparselab.cli reads its options from here, and
-- `sparselab CMD --help`, `sparselab help CMD` and `sparselab --help` print text generated
-- from here, so usage and parsing cannot drift (issue 18).
--
-- An option is {name, kind, metavar, doc [, short = "o"] [, hidden = true]}; kind is "flag"
-- (no value), "value" (one value; --name V or --name=V) or "multi" (repeatable, values
-- collected in order). `args` are the positional arguments as shown; `max_pos` how many the
-- command takes (nil: any number).
local C = {}

local TARGETS = {
  {"budget", "value", "X", "the method's knob set to X (sparselab methods: the knob column)"},
  {"density", "value", "D", "the knob solved (bisection) so that the executed mask keeps at least D of the causal pairs"},
  {"flops", "value", "F", "... so that executor FLOPs + estimator FLOPs reach F (the estimator counts)"},
  {"kv-bytes", "value", "B", "... so that the K/V bytes the executor reads reach B (see the notes)"},
}

C.list = {
  {name = "run", args = "SCRIPT.lua [ARGS]", max_pos = nil, passthrough = true,
    summary = "run an experiment script (its arguments follow it; `arg` holds them)", options = {}},
  {name = "methods", args = "[METHOD]", max_pos = 1, summary = "every method and correction: id, family, phase, knob, "
    .. "backends; with METHOD its parameters (defaults, ranges, block-size names)",
    options = {{"json", "flag", nil, "one JSON object per line"}}},
  {name = "ops", args = "", max_pos = 0, summary = "op x backend coverage",
    options = {{"json", "flag", nil, "one JSON object per op, with parameters and the dtypes each backend reads natively"}}},
  {name = "eval", args = "METHOD", max_pos = 1, summary = "evaluate a method against dense attention on one input",
    options = {
      {"qkv", "value", "FILE", "q, k, v from a safetensors file or a directory of .npy files: [heads, tokens, "
        .. "head_dim], or [batch, heads, tokens, head_dim] (each batch element evaluated and recorded on its own); "
        .. "named q/k/v or query_states/key_states/value_states"},
      {"names", "value", "q=A,k=B,v=C", "the tensor names of q, k, v in the --qkv file"},
      {"batch-index", "value", "B", "only batch element B (0-based) of a batched --qkv", hidden = true},
      {"workload", "value", "SPEC", "synthetic[,n=1024,heads=8,kv_heads=2,d=64,seed=1,n_sink=..,needles=..] or "
        .. "video[,frames=4,height=8,width=8,text=0,heads=4,d=64,seed=1,step=0,...] (non-causal; knobs in sparselab.layout)"},
      {"layout", "value", "SPEC", "video,frames=F,height=H,width=W[,text=T]: the token layout of --qkv tensors"},
      TARGETS[1], TARGETS[2], TARGETS[3], TARGETS[4],
      {"param", "multi", "K=V", "a method parameter (V a number, true/false, a word, or a list in braces)"},
      {"correct", "multi", "ID[:K=V,...]", "apply a correction (sparselab methods: kind correction)"},
      {"backend", "value", "ref|cpu|cuda", "the backend (default cpu)"},
      {"reps", "value", "N", "timing repetitions (the median is reported)"},
      {"db", "value", "FILE", "record the result in this database"},
      {"json", "flag", nil, "print the result as one JSON object"},
      {"out", "value", "FILE.safetensors", "write the method's output o and row log-sum-exp lse"},
      {"save-mask", "flag", nil, "also write mask u8 [H, n_q, n_k] into the --out file: the executed selection "
        .. "(1 = query i of head h attended key j), to diff with a reference implementation; refused above 2^28 elements"},
      {"mask-png", "value", "FILE.png", "picture of the executed mask (semantic beside it when the method has one), "
        .. "query blocks x key blocks per head, shaded by attention mass"},
      {"no-causal", "flag", nil, "non-causal attention (methods that are causal only refuse it)"},
      {"steps", "value", "S", "decode replay: the last S rows of the input are decoded one step at a time through "
        .. "the method's cache (decode methods); per step: recall, rel_l2, kv_bytes"},
    },
    notes = [[
Budget: at most one of --budget, --density, --flops, --kv-bytes; without one the method's
defaults run. --density D: kept pairs / causal pairs, averaged over mask heads. --kv-bytes B:
K/V bytes = for every KV head and query block, the keys of every key block that any query head of the KV
head's group keeps there (whole tiles, each counted once) x head_dim x 2 (K and V) x 4 bytes.
The knob is the cheapest setting that reaches the target; the target and the achieved value
are reported as target_<name> and achieved_<name>, and a target the knob cannot reach is an
error that gives the reachable range.
Reported: density (executed; density_semantic when the paper's mask differs), recall_mean and
recall_min (worst row), rel_l2, cosine, time_ms split into estimate_ms and execute_ms
(estimate_ms = 0 for static methods), flops (executor), estimator_flops, kv_bytes, speedup.]]},
  {name = "calibrate", args = "METHOD", max_pos = 1, summary = "calibrate a method's thresholds on inputs, write a config",
    options = {
      {"qkv", "multi", "FILE", "an input (safetensors or .npy directory; [H, N, D] or [B, H, N, D], each batch "
        .. "element one input)"},
      {"names", "value", "q=A,k=B,v=C", "the tensor names of q, k, v in the --qkv files"},
      {"layout", "value", "SPEC", "video,frames=F,height=H,width=W[,text=T]: the token layout (video attention: non-causal)"},
      {"no-causal", "flag", nil, "non-causal attention"},
      {"out", "value", "CFG.json", "the config file to write (then eval --param config=CFG.json)"},
      {"param", "multi", "K=V", "a method parameter"},
    }},
  {name = "model", args = "PATH", max_pos = 1,
    summary = "a model (llama2.c file or HF directory) with sparse attention: perplexity, KL, top-1 vs dense",
    options = {
      {"text", "value", "FILE", "the text to evaluate (required)"},
      {"method", "value", "ID", "the attention method (default dense)"},
      {"budget", "value", "X", "the method's knob"},
      {"param", "multi", "K=V", "a method parameter"},
      {"dense-layers", "value", "N", "keep the first N layers dense"},
      {"decode", "value", "ID[:K=V,...]", "a decode method run in the runner's decode loop (generation and "
        .. "teacher-forced scoring through its cache)"},
      {"prefix", "value", "N", "with --decode: tokens prefilled densely before decoding starts"},
      {"gen", "value", "N", "greedy generation steps compared with dense (default 64)"},
      {"prompt", "value", "TEXT", "unused; kept for scripts that pass it"},
      {"json", "flag", nil, "print one JSON object"},
      {"db", "value", "FILE", "record the result in this database"},
    }},
  {name = "query", args = "DB SQL", max_pos = 2,
    summary = "run SQL on a results database (read-only unless --write)",
    options = {
      {"csv", "flag", nil, "CSV output"},
      {"json", "flag", nil, "one JSON object per row"},
      {"write", "flag", nil, "open the database for writing (without it a statement that writes is refused)"},
    },
    notes = "Without --write the database is opened read-only: a read-only file or mount can be queried."},
  {name = "sweep", args = "CONFIG.lua", max_pos = 1, summary = "run a sweep config in worker processes into a database",
    options = {
      {"db", "value", "FILE", "the database (required)"},
      {"workers", "value", "N", "worker processes (default: the config's workers, else the CPU threads)"},
      {"timeout", "value", "S", "seconds a point may take before its worker is killed (default: the config's)"},
      {"resume", "flag", nil, "run again the points recorded as failed"},
      {"shard", "value", "I/N", "run only shard I of N (by point key; shards partition the points)"},
      {"dry-run", "flag", nil, "list the points that would run, and run nothing"},
      {"config-timeout", "value", "S", "seconds the config itself may take to evaluate (default 10)"},
      {"config-memory", "value", "MIB", "memory the config itself may allocate while it evaluates (default 1024)"},
      {"worker", "flag", nil, "internal: the worker process", hidden = true},
      {"slurm", "flag", nil, "write DIR/sweep.sbatch, a Slurm job array: task i runs `sparselab sweep CONFIG --shard i/N "
        .. "--db DIR/shard_i.db --resume`, stdout/stderr in DIR/shard_i.out/.err; the script records the config's hash "
        .. "and a task refuses a changed config"},
      {"array", "value", "N", "Slurm: shards (default: the points, at most 100)"},
      {"partition", "value", "P", "Slurm: #SBATCH --partition"},
      {"time", "value", "T", "Slurm: #SBATCH --time"},
      {"cpus-per-task", "value", "C", "Slurm: #SBATCH --cpus-per-task"},
      {"gpus-per-task", "value", "G", "Slurm: #SBATCH --gpus-per-task"},
      {"mem", "value", "M", "Slurm: #SBATCH --mem"},
      {"dir", "value", "DIR", "Slurm: where the script, shard databases and logs go (default CONFIG without .lua + .slurm)"},
      {"submit", "flag", nil, "Slurm: also submit the script (sbatch --parsable) and print the job id"},
      {"slurm-status", "value", "DIR", "per shard: done / running / pending / failed / missing (same as sparselab slurm status DIR)"},
      {"slurm-resubmit", "value", "DIR", "submit again only the failed and missing shards (sparselab slurm resubmit DIR)"},
      {"config-sha256", "value", "HEX", "internal: the config hash an array task checks", hidden = true},
    },
    notes = [[
Runs every point of CONFIG.lua (a Lua table; see lua/sparselab/sweep.lua) and records each in
the database under its point key; points already recorded 'ok' are skipped (failed ones too,
unless --resume, which runs them again and replaces the failed row). Two sweeps on one
database: each claims the points it will run; a sweep skips the points another running sweep
has claimed and says how many, so no point is recorded twice. A sweep killed with SIGKILL
leaves claims that the next sweep takes over. Exit status: 0 the sweep went through (failed
points are recorded), 1 a user error (one line), 128 + the signal when interrupted, after
committing what finished.]]},
  {name = "slurm", args = "status|resubmit DIR", max_pos = 2,
    summary = "state of a sweep's Slurm shards, or resubmit the failed and missing ones",
    options = {{"json", "flag", nil, "status as one JSON object"}},
    notes = [[
DIR is the directory `sparselab sweep CONFIG --slurm` wrote. status: one line per shard (from the
shard databases, and squeue/sacct when installed); exit 0 whatever the shards' states. resubmit:
submits again only the failed and missing shards and prints the new job id. Then:
sparselab merge OUT.db DIR/shard_*.db (refuses shards of another config hash).]]},
  {name = "merge", args = "OUT.db IN.db...", max_pos = nil, summary = "merge result databases into one", options = {}},
  {name = "compare", args = "DB", max_pos = 1, summary = "one table of the common metrics per group and budget",
    options = {
      {"by", "value", "COL", "the grouping column (default method; also target_density)"},
      {"where", "value", "SQL", "a condition over v_result"},
      {"all-runs", "flag", nil, "average over every run (default: only the latest run of each method, budget "
        .. "and workload, so reruns are not counted twice)"},
      {"csv", "flag", nil, "CSV output"},
      {"json", "flag", nil, "one JSON object per row"},
    }},
  {name = "fit", args = "DB", max_pos = 1, summary = "fit a scaling law to results; store it in the fit table",
    options = {
      {"law", "value", "sparse_frontier|power|loglinear", "the law (required)"},
      {"where", "value", "SQL", "which results (a condition over v_result)"},
      {"y", "value", "EXPR", "the response (default score, or rel_l2 for power)"},
      {"x", "value", "VAR,...", "the law's variables (loglinear, power)"},
      {"col", "multi", "VAR=EXPR", "a variable's SQL expression (wp.KEY, p.KEY, m.NAME shorthands)"},
      {"link", "value", "identity|logit", "the link function"},
      {"ref-task", "value", "T", "the reference task of sparse_frontier"},
      {"no-offset", "flag", nil, "no offset term (power: y = a*C^b)"},
      {"heldout", "value", "AXIS[:CUTOFF]", "hold out the points above CUTOFF on AXIS, report the extrapolation error"},
      {"bootstrap", "value", "B", "bootstrap resamples for the confidence intervals (default 200)"},
      {"seed", "value", "S", "bootstrap seed (default 1)"},
      {"level", "value", "P", "confidence level (default 0.95)"},
      {"solver", "value", "nls|linear", "the solver"},
      {"no-store", "flag", nil, "do not write the fit to the database"},
      {"json", "flag", nil, "print the fit as JSON"},
    }},
  {name = "fit-params", args = "METHOD", max_pos = 1,
    summary = "fit a trainable method's small learned parts on captured Q/K/V; write them as safetensors",
    options = {
      {"qkv", "multi", "FILE", "captured q, k, v (safetensors or .npy directory) to fit on"},
      {"out", "value", "W.safetensors", "the fitted parameters (load back with --param weights=FILE)"},
      {"steps", "value", "N", "optimiser steps (default 200)"},
      {"seed", "value", "S", "random seed (default 1)"},
      {"param", "multi", "K=V", "a method parameter"},
      {"backend", "value", "cpu|ref", "the backend (default cpu)"},
      {"json", "flag", nil, "print the result as one JSON object"},
    }},
  {name = "stats", args = "DB", max_pos = 1, summary = "paired tests of a method against dense per budget",
    options = {
      {"method", "value", "ID", "the method (required)"},
      {"metric", "value", "EXPR", "the metric (default score)"},
      {"by", "value", "EXPR", "the budget grouping"},
      {"dense", "value", "ID", "the reference method (default dense)"},
      {"margin", "value", "X", "allowed loss against dense"},
      {"alpha", "value", "A", "significance level"},
      {"test", "value", "wilcoxon|sign|bootstrap", "the paired test"},
      {"where", "value", "SQL", "a condition over v_result"},
      {"per", "value", "EXPR", "separate analyses per value (e.g. a task)"},
      {"pair", "value", "EXPR", "what makes two results one input"},
      {"compression", "value", "EXPR", "the compression expression"},
      {"lower-better", "flag", nil, "smaller metric values are better"},
      {"higher-better", "flag", nil, "larger metric values are better"},
      {"bootstrap", "value", "B", "bootstrap resamples"},
      {"seed", "value", "S", "bootstrap seed"},
      {"json", "flag", nil, "JSON output"},
    }},
  {name = "bench", args = "", max_pos = 0,
    summary = "dense vs sgemm ceiling, block-sparse vs dense, estimator overhead",
    options = {
      {"quick", "flag", nil, "small sizes"},
      {"json", "flag", nil, "one JSON object per result"},
      {"db", "value", "FILE", "record the results in this database"},
      {"backend", "value", "cpu|cuda", "the backend (default cpu)"},
      {"methods", "value", "a,b", "the estimators to time"},
      {"no-estimators", "flag", nil, "skip the estimator benchmarks"},
      {"only-estimators", "flag", nil, "only the estimator benchmarks"},
      {"est-heads", "value", "H[:KV]", "query (and KV) heads of the estimator benchmarks (default 8:2; 1:1 makes n = 65536 fit)"},
      {"video", "flag", nil, "video methods: executed density and speedup over dense on the video workload"},
      {"no-mm", "flag", nil, "skip the sparse matmul rows (sparse matmul vs sgemm, 11008 x 4096)"},
      {"only-mm", "flag", nil, "only the sparse matmul rows"},
      {"mm-rows", "value", "T[,T]...", "activation rows of the sparse matmul rows"},
      {"mm-parts", "value", "sparse,moe", "which sparse matmul rows: sparse (sparse and activation-sparse vs sgemm; the default), moe (grouped-GEMM MoE vs per-expert loop vs dense FFN)"},
      {"mm-moe", "value", "E:K", "experts and experts per token of the moe rows (default 8:2)"},
      {"n", "value", "N[,N]...", "attention sizes (default 4096 --quick / 4096,8192,16384) and the estimators' n"},
      {"d", "value", "D[,D]...", "head dims (block-sparse at the first)"},
      {"heads", "value", "H", "heads"},
      {"densities", "value", "R[,R]...", "block densities of the block-sparse runs"},
      {"patterns", "value", "window,random_blocks", "block patterns"},
      {"reps", "value", "R", "repetitions"},
      {"dtypes", "value", "f32,bf16", "input dtypes"},
      {"no-sgemm", "flag", nil, "skip the sgemm ceiling"},
      {"no-decode", "flag", nil, "skip the decode benchmarks"},
      {"decode-n", "value", "N", "decode context length"},
      {"decode-keys", "value", "K", "decode keys kept"},
      {"decode-nq", "value", "Q[,Q]...", "decode query rows"},
      {"decode-parts", "flag", nil, "time the decode parts separately"},
      {"only-decode", "flag", nil,
        "only the paged-cache decode rows (page.attend / page.attend_q vs memcpy, metadata update, memory; --decode-n sets the cache)"},
    }},
  {name = "plot", args = "DB [VIEW]", max_pos = 2,
    summary = "a chart from a results database through gnuplot (views: frontier, recall, pareto, scaling, break_even, "
      .. "bench)",
    options = {
      {"x", "value", "COL", "x: an SQL expression over v_result (wp.KEY, p.KEY, m.NAME shorthands)"},
      {"y", "value", "COL", "y: likewise"},
      {"by", "value", "COL", "one series per value (default: one series)"},
      {"where", "value", "SQL", "which results (a condition over v_result)"},
      {"logx", "flag", nil, "logarithmic x axis"},
      {"logy", "flag", nil, "logarithmic y axis"},
      {"fit", "multi", "ID", "draw stored fit ID (sparselab fit) with its points and bootstrap band; repeatable"},
      {"aggregate", "value", "EXPR", "average x and y per series and value of EXPR (e.g. target_density)"},
      {"title", "value", "TEXT", "the chart's title"},
      {"out", "value", "FILE.svg|png|pdf", "the file to write (required)", short = "o"},
    },
    notes = [[
Views (sparselab plot DB VIEW -o FILE): frontier (rel_l2 against executed density per method,
mean per target density), recall (recall_mean likewise), pareto (rel_l2 against cost relative to
dense, with the Pareto front), scaling (the stored fits with their points and confidence bands),
break_even (speedup against density, the break-even line), bench (kernel speedups of a `sparselab
bench --db` database against density, with the ideal 1/density). A view picks the input with the
most results unless --where chooses. Needs gnuplot (Debian gnuplot-nox).]]},
  {name = "report", args = "DB", max_pos = 1,
    summary = "an HTML and Markdown report: provenance, comparison tables, every standard plot, LaTeX tables",
    options = {
      {"out", "value", "DIR", "the folder to write (required; created)", short = "o"},
      {"where", "value", "SQL", "which results (a condition over v_result)"},
      {"title", "value", "TEXT", "the report's title"},
    },
    notes = "Writes DIR/index.html, DIR/report.md, DIR/tables.tex (booktabs) and DIR/*.svg."},
  {name = "help", args = "[COMMAND]", max_pos = 1, summary = "this overview, or a command's options", options = {}},
}

C.by_name = {}
for _, c in ipairs(C.list) do C.by_name[c.name] = c end

--- The parser spec of a command: {name = kind}, {short letter = name}.
function C.spec(name)
  local c = C.by_name[name]
  if not c then return nil end
  local spec, short = {help = "flag"}, {h = "help"}
  for _, o in ipairs(c.options) do
    spec[o[1]] = o[2]
    if o.short then short[o.short] = o[1] end
  end
  return spec, short
end

local function wrap(text, width, indent)
  local lines, line = {}, ""
  for word in text:gmatch("%S+") do
    if #line > 0 and #line + 1 + #word > width then
      lines[#lines + 1] = line
      line = word
    else
      line = #line > 0 and (line .. " " .. word) or word
    end
  end
  if #line > 0 then lines[#lines + 1] = line end
  return table.concat(lines, "\n" .. indent)
end

--- The usage line of a command.
function C.usage(name)
  local c = C.by_name[name]
  return "usage: sparselab " .. c.name .. (c.args ~= "" and (" " .. c.args) or "") ..
    (#c.options > 0 and " [options]" or "")
end

--- The full help text of a command.
function C.help(name)
  local c = C.by_name[name]
  local L = {C.usage(name), "", c.summary}
  local opts = {}
  for _, o in ipairs(c.options) do
    if not o.hidden then
      local head = "  " .. (o.short and ("-" .. o.short .. ", ") or "") .. "--" .. o[1] ..
        (o[3] and (" " .. o[3]) or "")
      opts[#opts + 1] = {head, o[4] .. (o[2] == "multi" and " (repeatable)" or "")}
    end
  end
  opts[#opts + 1] = {"  -h, --help", "this text"}
  local w = 0
  for _, o in ipairs(opts) do w = math.max(w, #o[1]) end
  w = math.min(w, 34)
  L[#L + 1] = ""
  L[#L + 1] = "options:"
  for _, o in ipairs(opts) do
    local pad = #o[1] >= w and ("\n" .. string.rep(" ", w + 2)) or string.rep(" ", w + 2 - #o[1])
    L[#L + 1] = o[1] .. pad .. wrap(o[2], 96 - w - 2, string.rep(" ", w + 2))
  end
  if c.notes then
    L[#L + 1] = ""
    L[#L + 1] = c.notes
  end
  return table.concat(L, "\n")
end

--- The program's overview.
function C.overview()
  local L = {"usage: sparselab                 start the REPL (`sl` loaded; ?name for help)",
    "       sparselab COMMAND [ARGS] [options]", "", "commands:"}
  local w = 0
  for _, c in ipairs(C.list) do w = math.max(w, #c.name) end
  for _, c in ipairs(C.list) do
    L[#L + 1] = string.format("  %-" .. w .. "s  %s", c.name, c.summary)
  end
  L[#L + 1] = ""
  L[#L + 1] = "sparselab COMMAND --help (or sparselab help COMMAND): the command's arguments and options."
  L[#L + 1] = "Exit status: 0 success, 1 user error (one line on stderr), 2 internal error (SPARSELAB_DEBUG=1 " ..
    "adds a traceback)."
  return table.concat(L, "\n")
end

return C
