#!/usr/bin/env bash
# Every dpmpi benchmark in one command: install what is missing (gnuplot-nox with DPM_WITH_BENCH=1), build
# the bench programs, run them, write CSV files and draw PNG plots (gnuplot, each plot from its CSV only)
# into bench/results/, and print a summary. docs/bench.md says what each file shows.
#
# Usage: bench/run.sh [--quick] [--plots-only] [--out DIR] [--build DIR]
#   (default)     full mode, a few minutes: the committed figures in bench/results/
#   --quick       fewer repeats and sizes, well under a minute; writes bench/results/quick/ unless --out
#   --plots-only  no building and no measuring: redraw the plots (and the summary) from the CSVs in DIR
#   --out DIR     where the CSVs and plots go
#   --build DIR   the CMake build directory (default build-bench, RelWithDebInfo = -O3 -g)
# Measurements go to a temporary directory first: a failed run leaves the previous results as they were.
# Timings are medians of repeats, but other jobs on the machine still move them: bench/results/meta.csv
# records the load average before and after the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=full plots_only=0 out="" build="$root/build-bench"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --plots-only) plots_only=1 ;;
    --out) out=$2; shift ;;
    --build) build=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$out" ]; then
  out="$root/bench/results"
  [ $mode = quick ] && out="$root/bench/results/quick"
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
cores=$(nproc)

# measuring needs everything dpmpi needs, plus gnuplot; redrawing only gnuplot
if [ $plots_only = 0 ] || ! command -v gnuplot > /dev/null; then DPM_WITH_BENCH=1 "$root/scripts/install-deps.sh"; fi

# ---- measuring -------------------------------------------------------------------------------------------
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# mpirun -np N; --oversubscribe lets N exceed Open MPI's slots (physical cores, which can be fewer than
# nproc's hardware threads) and changes nothing below them; above nproc, waiting ranks yield their core
mpi() {
  local n=$1
  shift
  local extra=(--oversubscribe)
  if [ "$n" -gt "$cores" ]; then extra+=(--mca mpi_yield_when_idle 1); fi
  mpirun -np "$n" "${extra[@]}" -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS "$@"
}

# keep the header, sort the rows by the given sort(1) keys (so every plotted series is contiguous)
sort_csv() {
  local f=$1
  shift
  { head -n 1 "$f"; tail -n +2 "$f" | sort -t, "$@"; } > "$f.sorted" && mv "$f.sorted" "$f"
}

measure() {
  echo "bench/run.sh: $mode mode, $cores core(s), build $build, results $out"
  local bin="$build/bench" tmp logs="$build/bench-logs"
  mkdir -p "$logs"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDPM_SANITIZE=OFF > "$logs/cmake.log" 2>&1 ||
    { cat "$logs/cmake.log"; exit 1; }
  cmake --build "$build" -j "$cores" --target bench_step bench_scaling bench_breakdown bench_accountant \
    > "$logs/build.log" 2>&1 || { cat "$logs/build.log"; exit 1; }
  tmp=$(mktemp -d "$out/.run.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  local t0=$SECONDS load0 reps steps
  load0=$(cut -d' ' -f1-3 /proc/loadavg)

  # 1. DP step against the non-private step, GEMM efficiency (one rank)
  if [ $mode = quick ]; then reps=3 steps=5; else reps=9 steps=10; fi
  echo "== 1. DP vs non-private step (bench_step, batch 256$([ $mode = full ] && echo ' and 2048'))"
  "$bin/bench_step" --csv "$tmp/step.csv" --gemm-csv "$tmp/gemm.csv" 256 $reps $steps | tee "$logs/step-256.log"
  if [ $mode = full ]; then
    "$bin/bench_step" --csv "$tmp/step.csv" --gemm-csv "$tmp/gemm.csv" 2048 5 $steps | tee "$logs/step-2048.log"
  fi

  echo "   ($((SECONDS - t0)) s so far)"
  # 2 + 3. scaling and communication share, 1 .. 4 ranks
  if [ $mode = quick ]; then reps=3 steps=3; else reps=7 steps=6; fi
  echo "== 2-3. scaling and communication share (bench_scaling, 1..4 ranks on $cores cores)"
  for n in 1 2 3 4; do
    mpi $n "$bin/bench_scaling" --csv "$tmp/scaling.csv" --comm-csv "$tmp/comm.csv" --cores "$cores" \
      --repeats $reps --steps $steps | tee "$logs/scaling-$n.log"
  done
  sort_csv "$tmp/scaling.csv" -k1,1 -k2,2 -k3,3n
  sort_csv "$tmp/comm.csv" -k1,1 -k2,2 -k3,3n

  echo "   ($((SECONDS - t0)) s so far)"
  # DP overhead breakdown (where the DP step's extra time goes), 1 and 2 ranks
  local models=mlp,cnn
  if [ $mode = quick ]; then reps=3 steps=10 models=mlp; else reps=7 steps=10; fi
  echo "== DP overhead breakdown (bench_breakdown)"
  "$bin/bench_breakdown" --csv "$tmp/breakdown.csv" --models $models --repeats $reps --steps $steps |
    tee "$logs/breakdown-1.log"
  if [ $mode = full ]; then
    "$bin/bench_breakdown" --csv "$tmp/breakdown.csv" --models wide --repeats 5 --steps 1 |
      tee "$logs/breakdown-wide.log"
    mpi 2 "$bin/bench_breakdown" --csv "$tmp/breakdown.csv" --repeats $reps --steps $steps | tee "$logs/breakdown-2.log"
  fi

  echo "   ($((SECONDS - t0)) s so far)"
  # 4. accountant query time against the number of steps
  echo "== 4. accountant query time (bench_accountant)"
  "$bin/bench_accountant" --csv "$tmp/accountant.csv" $([ $mode = quick ] && echo --quick) | tee "$logs/accountant.log"

  {
    echo "key,value"
    echo "date,$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode,$mode"
    local commit
    if commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null); then
      git -C "$root" diff --quiet HEAD -- src include bench || commit="$commit+uncommitted changes"
    else
      commit=unknown
    fi
    echo "commit,$commit"
    echo "cpu,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/,/ /g')"
    echo "cores,$cores"
    echo "openblas,$(dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null || dpkg-query -W -f='${Version}' libopenblas-dev 2>/dev/null || echo unknown)"
    echo "mpirun,$(mpirun --version 2>/dev/null | head -n 1 | sed 's/,/ /g')"
    echo "loadavg_before,$load0"
    echo "loadavg_after,$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "seconds,$((SECONDS - t0))"
  } > "$tmp/meta.csv"
  mv "$tmp"/*.csv "$out/"
  rm -rf "$tmp"
  trap - EXIT
  echo "bench/run.sh: measured in $((SECONDS - t0)) s; logs in $logs"
}

# ---- plots (each from its CSV only) ---------------------------------------------------------------------
gp() { # gp NAME: run the gnuplot program on stdin with csv = DIR/NAME.csv, png = DIR/NAME.png
  local name=$1
  if [ ! -s "$out/$name.csv" ]; then
    echo "bench/run.sh: no $out/$name.csv, $name.png not drawn" >&2
    return 0
  fi
  local prog
  prog=$(mktemp)
  cat > "$prog"
  gnuplot -e "csv='$out/$name.csv'; png='$out/$name.png'" "$prog" ||
    { echo "bench/run.sh: gnuplot failed on $name (program: $prog)" >&2; exit 1; }
  rm -f "$prog"
}

# pngcairo where gnuplot has it (Debian's gnuplot-nox does), else the libgd png terminal
GP_TERM=png
if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then GP_TERM=pngcairo; fi
GP_HEAD="
set terminal $GP_TERM size 1300,520 enhanced font 'DejaVu Sans,10'
set output png
set datafile separator ','
set grid ytics lc rgb '#dddddd'
set border 3
set tics nomirror
set bmargin 5
set key top left opaque
"

plots() {
  gp step <<EOF
$GP_HEAD
set multiplot layout 1,2 title "DP-SGD step against the non-private step (1 rank, same code path; median of repeats)"
set style fill solid 0.8 border -1
set boxwidth 0.34
set logscale y
set ylabel "ms per step"
set xrange [-0.6:*]
set title "step time"
plot csv skip 1 using (\$0-0.18):8:xtic(strcol(1)."\nbatch ".strcol(4)) with boxes lc rgb "#4477aa" title "non-private", \
     "" skip 1 using (\$0+0.18):9 with boxes lc rgb "#cc6677" title "DP-SGD"
unset logscale y
set ylabel "DP / non-private step time"
set yrange [*<0.8:*]
set title "ratio (goal <= 1.10)"
set arrow 1 from graph 0, first 1.1 to graph 1, first 1.1 nohead dt 2 lw 2 lc rgb "#228833"
set label 1 "goal 1.10" at graph 0.99, first 1.1 right offset 0,0.7 tc rgb "#228833"
plot csv skip 1 using 0:10:xtic(strcol(1)."\nbatch ".strcol(4)) with boxes lc rgb "#cc6677" notitle, \
     "" skip 1 using 0:10:(sprintf("%.2f", \$10)) with labels offset 0,0.8 notitle
unset multiplot
EOF

  gp gemm <<EOF
$GP_HEAD
set multiplot layout 1,2 title "GEMM efficiency of the dense models' step (1 rank): counted GEMM flops / step time against single-core cblas\\\\_sgemm"
set style fill solid 0.8 border -1
set boxwidth 0.18
set key outside bottom center horizontal maxcols 2 noopaque
set bmargin 8
set xrange [-0.6:*]
set yrange [0:*]
set ylabel "GFLOP/s"
set title "rates"
plot csv skip 1 using (\$0-0.3):8:xtic(strcol(1)."\nbatch ".strcol(3)) with boxes lc rgb "#bbbbbb" title "sgemm 2048^3", \
     "" skip 1 using (\$0-0.1):7 with boxes lc rgb "#777777" title "sgemm, the step's shapes", \
     "" skip 1 using (\$0+0.1):5 with boxes lc rgb "#4477aa" title "non-private step", \
     "" skip 1 using (\$0+0.3):6 with boxes lc rgb "#cc6677" title "DP step"
set ylabel "% of the sgemm rate"
set yrange [0:*]
set title "efficiency (goal >= 60%)"
set arrow 1 from graph 0, first 60 to graph 1, first 60 nohead dt 2 lw 2 lc rgb "#228833"
plot csv skip 1 using (\$0-0.3):(100*\$9):xtic(strcol(1)."\nbatch ".strcol(3)) with boxes lc rgb "#4477aa" title "non-private / shapes", \
     "" skip 1 using (\$0-0.1):(100*\$10) with boxes lc rgb "#cc6677" title "DP / shapes", \
     "" skip 1 using (\$0+0.1):(100*\$11) with boxes lc rgb "#aaccee" title "non-private / 2048^3", \
     "" skip 1 using (\$0+0.3):(100*\$12) with boxes lc rgb "#eebbcc" title "DP / 2048^3", \
     "" skip 1 using (\$0-0.1):(100*\$10):(sprintf("%.0f", 100*\$10)) with labels offset 0,0.8 notitle
unset multiplot
EOF

  gp scaling <<EOF
$GP_HEAD
set terminal $GP_TERM size 1300,900 enhanced font "DejaVu Sans,10"
set output png
stats csv skip 1 using 4 nooutput
cores = STATS_max
stats csv skip 1 using 3 nooutput
maxr = STATS_max
set xrange [0.7:maxr+0.3]
set xlabel "ranks (MPI processes, 1 thread each)" offset 0,-0.8
set bmargin 6
set object 1 rect from first cores+0.5, graph 0 to graph 1, graph 1 fc rgb "#eeeeee" fs solid noborder behind
set xtics ()
do for [r=1:maxr] { set xtics add (sprintf(r > cores ? "%d\n(oversubscribed)" : "%d", r) r) }
set samples 500
sel(m, mode) = strcol(1) eq m && strcol(2) eq mode
set multiplot layout 2,2 title "DP-SGD examples/s against ranks (hollow points, dashed: oversubscribed; x = ideal: R x the 1-rank baseline measured in the same run)"
do for [mode in "weak strong"] {
  set title (mode eq "weak" ? "weak scaling: 256 examples/rank expected" : "strong scaling: 1024 examples per logical batch in total")
  set ylabel "examples/s"
  set yrange [0:*]
  plot for [m in "mlp cnn"] csv skip 1 using (sel(m, mode) && \$5 == 0 ? \$3 : NaN):10 with linespoints pt 7 ps 1.3 lw 2 lc rgb (m eq "mlp" ? "#4477aa" : "#cc6677") title (m eq "mlp" ? "MLP 784-512-10" : "tanh CNN"), \
       for [m in "mlp cnn"] "" skip 1 using (sel(m, mode) && \$3 >= \$4 ? \$3 : NaN):10 with linespoints dt 2 pt 6 ps 1.5 lw 2 lc rgb (m eq "mlp" ? "#4477aa" : "#cc6677") notitle, \
       for [m in "mlp cnn"] "" skip 1 using (sel(m, mode) ? \$3 : NaN):(\$11*\$3) with points pt 2 ps 1.3 lc rgb (m eq "mlp" ? "#4477aa" : "#cc6677") title (m eq "mlp" ? "ideal (MLP)" : "ideal (CNN)")
}
do for [mode in "weak strong"] {
  set title "efficiency = examples/s / (ranks x 1-rank examples/s), ".mode." scaling"
  set ylabel "efficiency"
  set yrange [0:1.3]
  set key bottom left opaque
  set arrow 1 from graph 0, first 0.9 to graph 1, first 0.9 nohead dt 2 lw 2 lc rgb "#228833"
  set label 2 (mode eq "weak" ? "goal 0.90" : "0.90") at first cores+0.45, first 0.9 right offset 0,-0.8 tc rgb "#228833"
  plot for [m in "mlp cnn"] csv skip 1 using (sel(m, mode) ? \$3 : NaN):13:(\$5 > 0 ? 6 : 7) with linespoints pt variable ps 1.4 lw 2 lc rgb (m eq "mlp" ? "#4477aa" : "#cc6677") title (m eq "mlp" ? "MLP 784-512-10" : "tanh CNN"), \
       for [m in "mlp cnn"] "" skip 1 using (sel(m, mode) ? \$3 : NaN):13:(sprintf("%.2f", \$13)) with labels offset 0,1 notitle, \
       (x <= cores ? 1 : cores / x) with lines dt 3 lw 1.5 lc rgb "#888888" title "at most min(1, cores / ranks)"
}
unset multiplot
EOF

  gp comm <<EOF
$GP_HEAD
stats csv skip 1 using 4 nooutput
cores = STATS_max
stats csv skip 1 using 3 nooutput
maxr = STATS_max
set xrange [0.7:maxr+0.3]
set xlabel "ranks" offset 0,-0.8
set bmargin 6
set ylabel "% of the step time"
set yrange [0:*]
set object 1 rect from first cores+0.5, graph 0 to graph 1, graph 1 fc rgb "#eeeeee" fs solid noborder behind
set xtics ()
do for [r=1:maxr] { set xtics add (sprintf(r > cores ? "%d\n(oversubscribed)" : "%d", r) r) }
sel(m, mode) = strcol(1) eq m && strcol(2) eq mode
set multiplot layout 1,2 title "Communication share of a DP-SGD step (allreduce = the gradient transfer; wait = barrier before it, for the slowest rank; hollow: oversubscribed)"
do for [mode in "weak strong"] {
  set title mode." scaling (".(mode eq "weak" ? "256 examples/rank" : "1024 in total").")"
  plot for [m in "mlp cnn"] csv skip 1 using (sel(m, mode) ? \$3 : NaN):(100*\$9):(\$5 > 0 ? 6 : 7) with linespoints pt variable ps 1.3 lw 2 lc rgb (m eq "mlp" ? "#4477aa" : "#cc6677") title (m eq "mlp" ? "MLP: allreduce" : "CNN: allreduce"), \
       for [m in "mlp cnn"] "" skip 1 using (sel(m, mode) ? \$3 : NaN):(100*\$10):(\$5 > 0 ? 6 : 7) with linespoints pt variable ps 1.3 lw 2 dt 2 lc rgb (m eq "mlp" ? "#4477aa" : "#cc6677") title (m eq "mlp" ? "MLP: wait" : "CNN: wait")
}
unset multiplot
EOF

  gp accountant <<EOF
$GP_HEAD
set terminal $GP_TERM size 900,560 enhanced font "DejaVu Sans,10"
set output png
set title "Accountant query time against the number of steps (q = 0.004, sigma = 1, delta = 1e-5; median)"
set logscale xy
set format x "10^{%L}"
set format y "10^{%L}"
set xlabel "steps T"
set ylabel "ms per query"
set grid xtics ytics lc rgb "#dddddd"
set key top left
plot for [a in "tight rdp ledger"] csv skip 1 using (strcol(1) eq a ? \$4 : NaN):6 with linespoints pt 7 lw 2 \
     title (a eq "tight" ? "tight (PLD + FFT, dpm\\\\_pld\\\\_epsilon)" : a eq "rdp" ? "RDP, new (q, sigma): dpm\\\\_rdp\\\\_epsilon" : "RDP ledger check, cached (dpm\\\\_ledger\\\\_epsilon)")
EOF

  gp breakdown <<EOF
$GP_HEAD
set terminal $GP_TERM size 1300,620 enhanced font 'DejaVu Sans,10'
set output png
set title "Where a DP-SGD step's time goes: phases of dpm\\\\_step\\\\_run + update re-run one by one (expected batch 256 per rank; median),\nin % of the non-private step's phases; the DP bar's height is the DP / non-private ratio"
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border -1
set boxwidth 0.6
set ylabel "% of the non-private step"
set yrange [0:*]
set arrow 1 from graph 0, first 100 to graph 1, first 100 nohead dt 3 lc rgb "#888888"
set arrow 2 from graph 0, first 110 to graph 1, first 110 nohead dt 2 lw 2 lc rgb "#228833"
set label 1 "goal: DP <= 110%" at graph 0.01, first 110 left offset 0,0.7 tc rgb "#228833"
set key outside right top
set bmargin 7
colors = "#bbbbbb #777777 #4477aa #66ccee #ccbb44 #228833 #ee6677 #aa3377 #000000 #ffaabb"
do for [i=1:10] { set linetype i lc rgb word(colors, i) }
set xtics rotate by -30
plot for [i=6:15] csv using (100*column(i)/\$21):xtic(strcol(1)." ".(strcol(4) eq "dp" ? "DP" : "non-private").", ".strcol(3)." rank".(\$3 > 1 ? "s" : "")) title columnhead(i)
EOF
}

# ---- summary (from the CSVs) -----------------------------------------------------------------------------
summary() {
  echo
  echo "== summary ($out)"
  [ -s "$out/meta.csv" ] && awk -F, 'NR>1 && ($1=="date" || $1=="mode" || $1=="loadavg_before" || $1=="loadavg_after") {printf "%s %s; ", $1, $2} END {print ""}' "$out/meta.csv"
  [ -s "$out/step.csv" ] && awk -F, 'NR>1 {printf "step   %-5s batch %5d: non-private %9.3f ms, DP %9.3f ms, DP/non-private %.3f (paired %.3f) %s\n", $1, $4, $8, $9, $10, $11, ($10 <= 1.10 ? "goal <= 1.10 met" : "goal <= 1.10 NOT met")}' "$out/step.csv"
  [ -s "$out/gemm.csv" ] && awk -F, 'NR>1 {printf "gemm   %-5s batch %5d: step %.1f (np) / %.1f (DP) GFLOP/s; sgemm shapes %.1f, 2048^3 %.1f GFLOP/s; efficiency vs shapes %.0f%% / %.0f%%, vs 2048^3 %.0f%% / %.0f%%\n", $1, $3, $5, $6, $7, $8, 100*$9, 100*$10, 100*$11, 100*$12}' "$out/gemm.csv"
  [ -s "$out/scaling.csv" ] && awk -F, 'NR>1 && $3 > 1 {printf "scale  %-3s %-6s %d ranks%s: %8.0f examples/s, 1 rank %8.0f, efficiency %.3f\n", $1, $2, $3, ($5 ? " (oversubscribed)" : ""), $10, $11, $13}' "$out/scaling.csv"
  [ -s "$out/comm.csv" ] && awk -F, 'NR>1 && $3 > 1 {printf "comm   %-3s %-6s %d ranks%s: step %.2f ms, allreduce %.2f ms (%.1f%%), wait %.2f ms (%.1f%%)\n", $1, $2, $3, ($5 ? " (oversubscribed)" : ""), $6, $7, 100*$9, $8, 100*$10}' "$out/comm.csv"
  [ -s "$out/breakdown.csv" ] && awk -F, 'NR==1 {for (i=6; i<=15; i++) ph[i]=$i; next}
    {key=$1" "$3; for (i=6; i<=17; i++) v[key, $4, i]=$i; keys[key]=1; if ($4 == "dp") ns[key]=$18}
    END {for (k in keys) {d=v[k,"dp",17]-v[k,"nonprivate",17]; printf "dp-overhead %s rank(s): step %.2f -> %.2f ms (%+.2f); by phase:", k, v[k,"nonprivate",17], v[k,"dp",17], d;
         for (i=6; i<=15; i++) {x=v[k,"dp",i]-v[k,"nonprivate",i]; if (x > 0.01 || x < -0.01) printf " %s %+.2f", ph[i], x}; printf " (noise %.2f ns/draw)\n", ns[k]}}' "$out/breakdown.csv" | sort
  [ -s "$out/accountant.csv" ] && awk -F, 'NR>1 && ($4==10000 || $4==1000000) {printf "acct   %-6s T %7d: %.4f ms (epsilon %.4f)\n", $1, $4, $6, $5}' "$out/accountant.csv"
  echo "plots: $(cd "$out" && ls -- *.png 2>/dev/null | tr '\n' ' ')"
}

command -v gnuplot > /dev/null || { echo "bench/run.sh: gnuplot not found (DPM_WITH_BENCH=1 scripts/install-deps.sh)" >&2; exit 1; }
[ $plots_only = 1 ] || measure
plots
summary
