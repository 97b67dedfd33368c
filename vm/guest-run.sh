#!/bin/bash
# Inside the VM (from guest-boot.sh), in /project: `tcptrace-bpf check`, then the real-kernel
# suite once per backend, all four concurrently: under TCG one bcc compile takes 1.5 min,
# each pytest run compiles once (session tracer), check compiles each backend; in parallel
# they share the wall time of 2 vCPUs. Results go to the results disk as a tar for vm/run.sh;
# the verdict lines (vm/summary.py) also go to the console.
# No -e: every run is waited for and reported, whatever failed before it.
set -uo pipefail
cd /project || exit 1
res=/tmp/results; mkdir -p "$res"
# CI=true: nothing may skip in here; TCPTRACE_VM=1 collects tests/vm; compiles are slow here.
export CI=true TCPTRACE_VM=1 TCPTRACE_TEST_START_TIMEOUT=900 PYTHONDONTWRITEBYTECODE=1
echo "TCPTRACE-VM kernel $(uname -r), $(nproc) cpus, python $(python3 -c 'import platform; print(platform.python_version())')"

# The listener side against the MIB on this kernel too: the scenarios whose figures do not
# hang on sub-second timing (acceptq_ack and cookies_overflow must finish inside the
# client's first retransmit timeout, which TCG's slowness can miss).
listener_tests=()
for s in acceptq_syn synq_full cookies_always fastopen dualstack multi_listener; do
  listener_tests+=("tests/kernel/test_listeners.py::test_listener_lines_equal_the_namespace_mib[$s]")
done
python3 -m tcptrace_bpf.cli check --json > "$res/check.json" 2> "$res/check.err" &
check_pid=$!
for b in kprobe fentry auto; do
  (
    start=$SECONDS
    TCPTRACE_TEST_ATTACH=$b python3 -m pytest -p no:cacheprovider -ra -v --junitxml="$res/$b.xml" \
      tests/kernel/test_handshakes.py tests/vm "${listener_tests[@]}" > "$res/$b.log" 2>&1
    echo "$? $((SECONDS - start))" > "$res/$b.rc"
    echo "TCPTRACE-VM backend $b finished: $(tail -n1 "$res/$b.log")"
  ) &
done
wait "$check_pid"; echo $? > "$res/check.rc"
echo "TCPTRACE-VM check finished, exit $(cat "$res/check.rc")"
wait

python3 vm/summary.py "$res" kprobe fentry auto
rc=$?
dmesg > "$res/dmesg.txt"
tar -c -f "$TCPTRACE_VM_RESULTS_DISK" -C "$res" . || echo "TCPTRACE-VM cannot write results disk"
sync
exit "$rc"
