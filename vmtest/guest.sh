#!/bin/sh
# The checks of the cgroup-v2 test VM, run as PID 1 by vmtest/init after
# switch_root into the host's root (read-only over 9p; tmpfs /tmp and /run).
# Busybox sh with busybox's tools; lambdalet and python3 are the host's.
#
# It sets up the cgroups the way systemd would for a `lambdalet.service` with
# Delegate=yes, starts `lambdalet serve` in that service's cgroup, deploys the
# functions of vmtest/functions with the CLI and checks what the kernel
# enforces. Every check prints one line on the console,
#   VMTEST-RESULT <name> PASS|FAIL <detail>
# and the run ends with `VMTEST-DONE pass=N fail=M` and a power-off.
# vmtest/run.sh reads them; the expected names are listed there.
/run/vmtest/bin/busybox --install -s /run/vmtest/bin
export PATH=/run/vmtest/bin HOME=/tmp
. /run/vmtest/conf
PASS=${PASS:-0} FAIL=${FAIL:-0}

C=/sys/fs/cgroup
SVC=$C/system.slice/lambdalet.service # the subtree the supervisor is given
SOCK=/tmp/lambdalet.sock
STATE=/tmp/state
SERVE_LOG=/tmp/serve.log
FUNCS=$VMTEST_REPO/vmtest/functions
W=/tmp/vmtest # scratch
mkdir -p $W

now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
R() { # R NAME PASS|FAIL DETAIL...
  echo "VMTEST-RESULT $* [t=$(now)]"
  if [ "$2" = PASS ]; then PASS=$((PASS + 1)); else FAIL=$((FAIL + 1)); fi
}
info() { echo "VMTEST-INFO $*"; }
# The CLI, bounded: a hung supervisor must fail a check, not the whole boot.
L() { timeout 150 "$VMTEST_BIN" --socket $SOCK "$@"; }
# jget FILE KEY: a scalar of a flat JSON object (the handlers return such).
jget() { sed -n -E 's/.*"'"$2"'": *("([^"]*)"|([^,}]*)).*/\2\3/p' "$1" | head -1; }
# Every cgroup directory below the supervisor's subtree.
svc_dirs() { find $SVC -mindepth 1 -type d 2>/dev/null | sort; }
# first_pid DIR: a process of the cgroup DIR, if any. (cgroupfs files have
# size 0: read them, `test -s` is always false.)
first_pid() { head -n 1 "$1/cgroup.procs" 2>/dev/null; }
uid_of() { awk '$1 == "Uid:" {print $2}' "/proc/$1/status" 2>/dev/null; }
# env_of_uid UID: the environment cgroup whose processes run as UID. Every
# function has a uid of its own, and environments are made ahead of time
# (blank ones, named by the supervisor), so the uid is what tells them apart.
env_of_uid() {
  svc_dirs | while read -r d; do
    p=$(first_pid "$d")
    [ -n "$p" ] && [ "$(uid_of "$p")" = "$1" ] && { echo "$d"; break; }
  done
}
# env_where FILE VALUE: the populated cgroup whose FILE holds VALUE.
env_where() {
  svc_dirs | while read -r d; do
    [ -n "$(first_pid "$d")" ] && [ "$(cat "$d/$1" 2>/dev/null)" = "$2" ] && { echo "$d"; break; }
  done
}
# env_above FILE BYTES: the populated cgroup whose FILE exceeds BYTES.
env_above() {
  svc_dirs | while read -r d; do
    v=$(cat "$d/$1" 2>/dev/null)
    [ -n "$(first_pid "$d")" ] && [ "${v:-0}" -gt "$2" ] && { echo "$d"; break; }
  done
}
# Every process in the supervisor's subtree, as "pid:comm".
svc_procs() {
  find $SVC -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do
    echo "$p:$(cat /proc/"$p"/comm 2>/dev/null)"
  done | tr '\n' ' '
}
# What must not change outside the subtree: the directories and the interface
# files systemd (here: this script) owns.
outside_snapshot() {
  find $C -path $SVC -prune -o -type d -print | sort | while read -r d; do
    echo "$d subtree_control=[$(cat "$d/cgroup.subtree_control")]"
    for f in memory.max cpu.max pids.max; do
      [ -f "$d/$f" ] && echo "$d $f=$(cat "$d/$f")"
    done
  done
}
finish() {
  if [ -s $SERVE_LOG ]; then
    echo "--- lambdalet serve log (last 80 lines):"
    tail -n 80 $SERVE_LOG | cut -c1-600 | sed 's/^/serve| /'
  fi
  echo "VMTEST-DONE pass=$PASS fail=$FAIL uptime=$(now)"
  sync
  poweroff -f
}

echo "VMTEST-BEGIN guest uptime=$(now) bin=$VMTEST_BIN python=$VMTEST_PYTHON"
grep -E ' (/|/tmp|/run|/sys/fs/cgroup) ' /proc/mounts

# --- delegation set up as systemd does it -------------------------------------
# The root enables the controllers for its children; system.slice for its
# services; lambdalet.service (Delegate=yes) is handed over with nothing
# enabled in it and the supervisor as its only process. The supervisor must
# then move itself into a leaf before it can enable controllers there
# ("no internal processes", Documentation/admin-guide/cgroup-v2.rst).
echo "+memory +cpu +pids" >$C/cgroup.subtree_control
mkdir -p $C/system.slice $SVC
echo "+memory +cpu +pids" >$C/system.slice/cgroup.subtree_control
outside_snapshot >$W/outside.before

# --- supervisor -----------------------------------------------------------------
t=$(now)
# shellcheck disable=SC2016
sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' $SVC \
  "$VMTEST_BIN" --socket $SOCK serve --state-dir $STATE --python "$VMTEST_PYTHON" \
  >$SERVE_LOG 2>&1 &
SUP=$!
up=
# Up to 120 s of guest time, however slow each try is: a supervisor that
# has bound its socket but does not answer fails this check (each try waits
# at most 10 s) instead of holding the boot until the host kills it.
while awk -v s="$(since "$t")" 'BEGIN{exit !(s < 120)}'; do
  if [ -S $SOCK ] && timeout 10 "$VMTEST_BIN" --socket $SOCK list-functions >/dev/null 2>&1; then
    up=1
    break
  fi
  kill -0 $SUP 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  R supervisor FAIL "not serving on $SOCK after $(since "$t") s (alive: $(kill -0 $SUP 2>/dev/null && echo yes || echo no)): $(tail -n 5 $SERVE_LOG | tr '\n' '|')"
  finish
fi
serving=$(since "$t")
# The zygote is started with the supervisor, and the first environment's init
# deadline (10 s) runs while it still preloads: wait for it, so that a cold
# start under emulation measures the sandbox, not the zygote's start.
i=0
until grep -q 'zygote.*ready' $SERVE_LOG || [ $i -ge 1200 ]; do sleep 0.1; i=$((i + 1)); done
if grep -q 'zygote.*ready' $SERVE_LOG; then
  R supervisor PASS "pid $SUP serving after $serving s; $(grep -o 'zygote.*ready.*' $SERVE_LOG | head -1) (at $(since "$t") s); in cgroup $(cut -d: -f3 /proc/$SUP/cgroup)"
else
  R supervisor FAIL "serving after $serving s, but no 'zygote … ready' line in its log after $(since "$t") s (if the message changed, update vmtest/guest.sh)"
fi

# --- delegation: what the supervisor made of its subtree -----------------------
own_procs=$(cat $SVC/cgroup.procs)
sup_cg=$(cut -d: -f3 /proc/$SUP/cgroup)
ctl=$(cat $SVC/cgroup.subtree_control)
if [ -n "$own_procs" ]; then
  R delegation FAIL "$SVC still has processes ($own_procs): no controllers can be enabled below it"
elif [ "${sup_cg#/system.slice/lambdalet.service/}" = "$sup_cg" ]; then
  R delegation FAIL "the supervisor left its subtree: it is in $sup_cg"
elif ! echo " $ctl " | grep -q ' memory ' || ! echo " $ctl " | grep -q ' cpu ' || ! echo " $ctl " | grep -q ' pids '; then
  R delegation FAIL "memory/cpu/pids not enabled in $SVC/cgroup.subtree_control: [$ctl]"
else
  R delegation PASS "supervisor moved itself into the leaf $sup_cg; $SVC enables [$ctl]; tree: $(svc_dirs | sed "s|^$SVC/||" | tr '\n' ' ')"
fi
SEEN=$W/env-dirs # every function's environment cgroup seen, for delete_cleanup
UIDS=$W/uids     # every function's uid
: >$SEEN
: >$UIDS
# seen DIR UID: remember a function's environment cgroup and uid.
seen() {
  [ -n "$1" ] && echo "$1" >>$SEEN
  [ -n "$2" ] && echo "$2" >>$UIDS
  return 0
}

create() { # create NAME MEMORY TIMEOUT: deploy vmtest/functions/NAME
  L create-function "$1" --runtime python3 --handler app.handler --code "$FUNCS/$1" \
    --memory "$2" --timeout "$3" >$W/"$1".create 2>&1 ||
    { echo "create-function $1 failed: $(tr '\n' ' ' <$W/"$1".create)"; return 1; }
}
invoke() { # invoke NAME PAYLOAD: payload -> $W/NAME.out, metadata -> $W/NAME.meta
  rm -f $W/"$1".out
  L invoke "$1" --payload "$2" $W/"$1".out >$W/"$1".meta 2>&1
}
meta() { tr -s ' \n' ' ' <$W/"$1".meta; }

# --- hello: a cold start through the whole sandbox ------------------------------
t=$(now)
if out=$(create hello 256 60); then
  if invoke hello '{"name": "vm"}'; then
    g=$(jget $W/hello.out greeting) uid=$(jget $W/hello.out uid) cg=$(jget $W/hello.out cgroup)
    sys=$(jget $W/hello.out has_sys)
    d=$(env_of_uid "$uid")
    seen "$d" "$uid"
    if [ "$g" = "hello vm" ] && [ "${uid:-0}" != 0 ] && [ "$cg" = "0::/" ] && [ "$sys" = false ] && [ -n "$d" ]; then
      R hello PASS "cold start + invoke in $(since "$t") s: uid=$uid in ${d#"$C"}, seen from inside as cgroup $cg (own cgroup namespace); /sys visible: $sys"
    else
      R hello FAIL "unexpected answer after $(since "$t") s: $(cat $W/hello.out) $(meta hello)"
    fi
  else
    R hello FAIL "invoke failed after $(since "$t") s: $(meta hello)"
  fi
else
  R hello FAIL "$out"
fi

# --- limits: the env's cgroup files hold the configured limits while it runs ----
# 333 MB: memory.max = 333 MiB, no swap, cpu.max = 333/1769 of a 100 ms period,
# pids.max = 1024 (DESIGN.md: the execution environment).
t=$(now)
MB=333
exp_mem=$((MB * 1048576)) exp_quota=$((100000 * MB / 1769))
if out=$(create limits $MB 60); then
  invoke limits '{"sleep": 6}' &
  inv=$!
  d=
  i=0
  while [ $i -lt 600 ] && kill -0 $inv 2>/dev/null; do
    # The only function with 333 MB: its environment once specialised.
    d=$(env_where memory.max $exp_mem)
    [ -n "$d" ] && break
    sleep 0.1
    i=$((i + 1))
  done
  if [ -n "$d" ]; then
    # The init phase runs with at least one vCPU, the invoke with the
    # function's share: wait for the invoke (the handler sleeps for 6 s).
    while kill -0 $inv 2>/dev/null; do
      q=$(cut -d' ' -f1 "$d/cpu.max")
      [ "$q" -ge $((exp_quota - 1)) ] && [ "$q" -le $((exp_quota + 1)) ] && break
      sleep 0.1
    done
    mem=$(cat "$d"/memory.max) swap=$(cat "$d"/memory.swap.max 2>/dev/null || echo missing)
    cpu=$(cat "$d"/cpu.max) pids=$(cat "$d"/pids.max) peak=$(cat "$d"/memory.peak 2>/dev/null || echo missing)
    group=$(cat "$d"/memory.oom.group 2>/dev/null || echo missing)
    procs=$(tr '\n' ' ' <"$d"/cgroup.procs)
  fi
  wait $inv
  rc=$?
  seen "$d" "$(jget $W/limits.out uid)"
  quota=${cpu% *} period=${cpu#* }
  got="memory.max=$mem memory.swap.max=$swap cpu.max=\"$cpu\" pids.max=$pids memory.peak=$peak memory.oom.group=$group procs=[$procs]"
  if [ -z "$d" ]; then
    R limits FAIL "no environment cgroup with memory.max=$exp_mem appeared under $SVC: $(svc_dirs | tr '\n' ' '); invoke rc=$rc $(cat $W/limits.out 2>/dev/null) $(meta limits)"
  elif [ "$mem" = $exp_mem ] && [ "$swap" = 0 ] && [ "$period" = 100000 ] &&
    [ "$quota" -ge $((exp_quota - 1)) ] && [ "$quota" -le $((exp_quota + 1)) ] &&
    [ "$pids" = 1024 ] && [ $rc = 0 ] && [ "$(jget $W/limits.out slept)" = true ]; then
    R limits PASS "${d#"$C"} during the invoke: $got"
  else
    R limits FAIL "${d#"$C"}: $got; expected memory.max=$exp_mem memory.swap.max=0 cpu.max=\"$exp_quota 100000\" pids.max=1024; invoke rc=$rc $(meta limits)"
  fi
else
  R limits FAIL "$out"
fi
info "limits took $(since "$t") s"

# --- memory_oom: 512 MiB in a 128 MB function ----------------------------------
t=$(now)
if out=$(create oom 128 60); then
  invoke oom '{"mb": 512}' &
  inv=$!
  # Remember its cgroup, the one filling up (it goes with the killed
  # environment), and who runs there.
  d=
  while kill -0 $inv 2>/dev/null; do
    d=$(env_above memory.current $((64 << 20)))
    [ -n "$d" ] && { seen "$d" "$(uid_of "$(first_pid "$d")")"; break; }
    sleep 0.1
  done
  wait $inv
  rc=$?
  etype=$(jget $W/oom.out errorType) ferr=$(jget $W/oom.meta FunctionError)
  report=$(L logs oom 2>&1 | grep '^REPORT' | tail -1)
  used=$(echo "$report" | sed -n 's/.*Max Memory Used: \([0-9]*\) MB.*/\1/p')
  if [ $rc = 0 ] && [ -n "$ferr" ] && [ "$etype" = Runtime.OutOfMemory ] &&
    [ "${used:-0}" -ge 100 ] && [ "${used:-0}" -le 135 ]; then
    R memory_oom PASS "FunctionError=$ferr errorType=$etype Max Memory Used=${used} MB of 128 (${d#"$C"}, $(since "$t") s)"
  else
    R memory_oom FAIL "rc=$rc FunctionError=$ferr errorType=$etype payload=$(cat $W/oom.out 2>/dev/null) REPORT=[$report]"
  fi
else
  R memory_oom FAIL "$out"
fi

# --- cpu_share: 128 MB gets 128/1769 = 0.072 of a CPU ---------------------------
t=$(now)
if out=$(create cpu 128 10); then
  if invoke cpu '{"seconds": 2}'; then
    uid=$(jget $W/cpu.out uid)
    d=$(env_of_uid "$uid")
    seen "$d" "$uid"
    share=$(jget $W/cpu.out share) cpu=$(jget $W/cpu.out cpu) wall=$(jget $W/cpu.out wall)
    thr=$(awk '$1=="nr_throttled"{print $2}' "$d"/cpu.stat 2>/dev/null)
    # Loose: TCG and a loaded CI host only ever lower the share; the limit is
    # what keeps it far from 1, and the kernel must have throttled it.
    if [ -n "$share" ] && awk -v s="$share" 'BEGIN{exit !(s > 0 && s < 0.2)}' && [ "${thr:-0}" -ge 1 ]; then
      R cpu_share PASS "share=$share of one CPU (cpu ${cpu}s / wall ${wall}s; expected ~0.072) nr_throttled=$thr (${d#"$C"}: cpu.max=\"$(cat "$d/cpu.max")\")"
    else
      R cpu_share FAIL "share=$share (cpu=$cpu wall=$wall) nr_throttled=${thr:-?} in [${d#"$C"}] $(cat $W/cpu.out) $(meta cpu)"
    fi
  else
    R cpu_share FAIL "invoke failed: $(cat $W/cpu.out 2>/dev/null) $(meta cpu)"
  fi
else
  R cpu_share FAIL "$out"
fi
info "cpu_share took $(since "$t") s"

# --- forkbomb: a shell forks until refused; the limit holds --------------------
# 1024 MB so that memory is not what stops it. The bomb's processes stay after
# the invoke, so the environment sits at its limit (sampled here) and
# delete_cleanup must kill ~1000 processes. The handler needs the static
# busybox next to it (functions/forkbomb/app.py says why).
t=$(now)
mkdir -p $W/code/forkbomb
cp "$FUNCS"/forkbomb/app.py /run/vmtest/bin/busybox $W/code/forkbomb/
if out=$(L create-function forkbomb --runtime python3 --handler app.handler --code $W/code/forkbomb \
  --memory 1024 --timeout 120 2>&1); then
  if invoke forkbomb '{"hold": 1}'; then
    uid=$(jget $W/forkbomb.out uid)
    d=$(env_of_uid "$uid")
    seen "$d" "$uid"
    n=$(jget $W/forkbomb.out processes) berr=$(jget $W/forkbomb.out bomb_error)
    secs=$(jget $W/forkbomb.out bomb_seconds) top=$(jget $W/forkbomb.out topped_up)
    ref=$(jget $W/forkbomb.out fork_refused) acc=$(jget $W/forkbomb.out fork_accepted)
    ferr=$(jget $W/forkbomb.out fork_errors)
    samples="" hi=0 lo=99999
    for _ in 1 2 3 4 5; do
      c=$(cat "$d"/pids.current 2>/dev/null || echo 0)
      samples="$samples $c"
      [ "$c" -gt "$hi" ] && hi=$c
      [ "$c" -lt "$lo" ] && lo=$c
      sleep 0.2
    done
    ev=$(awk '$1=="max"{print $2}' "$d"/pids.events 2>/dev/null)
    # EAGAIN's message: the shell stopped because the kernel refused a fork.
    if echo "$berr" | grep -q 'Resource temporarily unavailable' &&
      [ "${n:-0}" -ge 1000 ] && [ "${n:-0}" -le 1024 ] &&
      [ "${acc:-1}" = 0 ] && [ "${ref:-0}" -ge 1 ] && [ "$ferr" = EAGAIN ] &&
      [ "$hi" -le 1024 ] && [ "$lo" -ge 1000 ] && [ "${ev:-0}" -ge 1 ]; then
      R forkbomb PASS "bomb stopped after $secs s: \"$berr\"; $n processes in the environment; fork() then refused $ref times ($ferr), accepted $acc; pids.current after the invoke:$samples; pids.events max=$ev (${d#"$C"}, $(since "$t") s)"
    else
      R forkbomb FAIL "in [${d#"$C"}] processes=$n bomb_error=\"$berr\" topped_up=$top fork_refused=$ref ($ferr) fork_accepted=$acc pids.current:$samples pids.events max=$ev after $(since "$t") s: $(cat $W/forkbomb.out) $(meta forkbomb)"
    fi
  else
    R forkbomb FAIL "invoke failed after $(since "$t") s: $(cat $W/forkbomb.out 2>/dev/null) $(meta forkbomb)"
  fi
else
  R forkbomb FAIL "create-function forkbomb failed: $out"
fi

# --- delete_cleanup: deleting the functions removes every cgroup of theirs ----
t=$(now)
errs=
for f in hello limits oom cpu forkbomb; do
  L delete-function $f >$W/del.out 2>&1 || errs="$errs $f: $(tr '\n' ' ' <$W/del.out)"
done
# Gone: the cgroups the functions' environments had, and every process that
# ran as one of the functions' uids. (Blank environments made ahead of time
# for any function may remain: they have run no function's code.)
left='' strays=''
i=0
while [ $i -lt 100 ]; do # the last kills may finish just after the answer
  left=$(sort -u $SEEN | while read -r d; do [ -e "$d" ] && echo "${d#"$C"}"; done | tr '\n' ' ')
  strays=$(find $SVC -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do
    grep -qxF "$(uid_of "$p")" $UIDS && echo "$p"
  done | tr '\n' ' ')
  [ -z "$left$strays" ] && break
  sleep 0.1
  i=$((i + 1))
done
nseen=$(sort -u $SEEN | grep -c .)
if [ -n "$errs" ]; then
  R delete_cleanup FAIL "delete-function failed:$errs"
elif [ "$nseen" -lt 5 ]; then
  R delete_cleanup FAIL "only $nseen of the 5 functions' environment cgroups were found: $(sort -u $SEEN | tr '\n' ' ')"
elif [ -n "$left$strays" ]; then
  R delete_cleanup FAIL "10 s after delete-function: cgroups left: [$left] processes of the functions' uids left: [$(echo "$strays" | cut -c1-300)]"
else
  R delete_cleanup PASS "$nseen environment cgroups gone, forkbomb's ~1000 processes with them, in $(since "$t") s; left in the subtree: $(svc_dirs | sed "s|^$SVC/||" | tr '\n' ' ')"
fi

# --- subtree_confined: nothing outside lambdalet.service was changed ------------
outside_snapshot >$W/outside.after
if cmp -s $W/outside.before $W/outside.after; then
  R subtree_confined PASS "$(grep -c . $W/outside.after) entries outside $SVC unchanged"
else
  R subtree_confined FAIL "changed outside $SVC: $(diff $W/outside.before $W/outside.after | grep '^[-+]/' | tr '\n' ' ')"
fi

# --- supervisor_stop: SIGTERM ends it and every process of its subtree ----------
t=$(now)
kill -TERM $SUP
i=0
while kill -0 $SUP 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
if kill -0 $SUP 2>/dev/null; then
  R supervisor_stop FAIL "still running 20 s after SIGTERM"
  kill -KILL $SUP
else
  wait $SUP
  rc=$?
  i=0
  while [ -n "$(svc_procs)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  procs=$(svc_procs)
  if [ $rc = 0 ] && [ -z "$procs" ]; then
    R supervisor_stop PASS "exit 0 after $(since "$t") s; no process left in $SVC; left: $(svc_dirs | sed "s|^$SVC/||" | tr '\n' ' ')"
  else
    R supervisor_stop FAIL "exit $rc; processes left in $SVC: [$procs]"
  fi
fi
finish
