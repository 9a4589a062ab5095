# Shared by the start-*/stop-* scripts of this kit; sourced after `data` (DATA_DIR, resolved) and
# `run` ($data/run) are set. `kit` names the calling script in messages.
#
# Processes are tracked as run/NAME.pid plus run/NAME.starttime (the kernel's start time of that
# pid), so a recycled pid never makes us signal a process we did not start.

starttime() { # PID -> start time in clock ticks since boot; fails if there is no such live process
  local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  # shellcheck disable=SC2086 # split into the stat fields on purpose
  set -- $s
  [ "$1" != Z ] || return 1
  echo "${20}"
}
alive() { # NAME: the process in run/NAME.pid is alive and is the one we started
  local pid st
  [ -f "$run/$1.pid" ] || return 1
  pid=$(cat "$run/$1.pid"); [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(starttime "$pid") || return 1
  if [ -f "$run/$1.starttime" ]; then
    [ "$(cat "$run/$1.starttime")" = "$st" ]
  else # pid file written by an older version of this kit: check the command line instead
    grep -qF -- "$data/" "/proc/$pid/cmdline" 2>/dev/null \
      || { [ "$1" = memcached ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = memcached ]; }
  fi
}
stop_one() { # NAME: SIGTERM, then SIGKILL after 10 s, only if it is still our process
  local pid
  if alive "$1"; then
    pid=$(cat "$run/$1.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$1" || break; sleep 0.1; done
    if alive "$1"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.1; fi
    echo "${kit:-test-server}: stopped $1 (pid $pid)" >&2
  fi
  rm -f "$run/$1.pid" "$run/$1.starttime"
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
elapsed() { local ms=$(( (10#${EPOCHREALTIME//[.,]/} - 10#${t0//[.,]/}) / 1000 )); printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)); }
