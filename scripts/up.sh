#!/usr/bin/env bash
# Brings the whole stack up on local defaults: installs what is missing (bootstrap.sh), starts
# PostgreSQL and RabbitMQ if they are down, creates the database, migrates every service,
# starts the local stand-ins for outside systems (SMTP server; Stripe-compatible server; the
# Twilio-protocol server when MSP_SMS_TRANSPORT=twilio) and the five processes, waits until
# each answers /readyz, and prints where to open the portal. Stays in the foreground; Ctrl-C
# (or SIGTERM) stops everything it started.
#
#   bash scripts/up.sh             foreground; Ctrl-C stops it all
#   bash scripts/up.sh --detach    (or MSP_UP_DETACH=1) returns once ready; scripts/down.sh stops it
#
# Every setting comes from the services' own settings (MSP_* environment variables, see
# shared/src/msp_shared/config.py and <service>/src/<package>/config.py); this script reads
# the values through those classes, so there is one place for each default. Its own knobs:
#   MSP_UP_LOG_DIR   (default var/log)  one <name>.log per process
#   MSP_UP_RUN_DIR   (default var/run)  up.pids: "<name> <pid>" per process, for down.sh
#   MSP_UP_TIMEOUT   (default 120)      seconds allowed for everything to become ready
#   MSP_UP_STOP_GRACE (default 20)      seconds a process gets to stop before SIGKILL
set -euo pipefail

DETACH="${MSP_UP_DETACH:-0}"
for arg in "$@"; do
  case "$arg" in
    -d|--detach) DETACH=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) printf '[up] unknown argument: %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

# shellcheck source=bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"   # also cd's to the repository root
PY="$ROOT/.venv/bin/python"                            # the locked environment uv just synced
SERVICES=(auth verify mail billing gateway)
LOG_DIR="$(realpath -m "${MSP_UP_LOG_DIR:-var/log}")"
RUN_DIR="$(realpath -m "${MSP_UP_RUN_DIR:-var/run}")"
PID_FILE="$RUN_DIR/up.pids"
TIMEOUT="${MSP_UP_TIMEOUT:-120}"
say() { printf '[up] %s\n' "$*" >&2; }

# ---- refuse to start twice ---------------------------------------------------------------------
alive() {  # a pid that exists and is not a zombie waiting to be reaped
  local state
  state="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
if [ -f "$PID_FILE" ]; then
  while read -r name pid; do
    if alive "$pid"; then
      say "already running ($name is pid $pid, see $PID_FILE): stop it with 'bash scripts/down.sh' first"
      exit 1
    fi
  done <"$PID_FILE"
  rm -f "$PID_FILE"
fi
mkdir -p "$LOG_DIR" "$RUN_DIR"

# ---- settings, read through the services' own settings classes ---------------------------------
settings_sh="$("$PY" - <<'PY'
import importlib, inspect, os, shlex

from msp_shared.config import ServiceSettings

def settings(package):
    module = importlib.import_module(f"{package}.config")
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, ServiceSettings) and c is not ServiceSettings and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise SystemExit(f"{package}.config must define exactly one ServiceSettings subclass, found {classes}")
    return classes[0]()

def secret(value):
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value

out = {}
loaded = {svc: settings(f"msp_{svc}") for svc in ("auth", "verify", "mail", "billing", "gateway")}
for svc, s in loaded.items():
    out[f"PORT_{svc}"] = s.http_port
auth, mail, verify, billing = loaded["auth"], loaded["mail"], loaded["verify"], loaded["billing"]
out["DATABASE_URL"] = auth.database_url
out["DEV_OUTBOX"] = os.path.abspath(auth.dev_outbox)
out["SEED_EMAIL"] = auth.seed_support_email or ""
out["SEED_PASSWORD"] = secret(auth.seed_support_password) or ""
# The local stand-ins for outside systems, and where the services look for them.
from msp_mail.devsmtp import DevSmtpSettings
from msp_verify.config import TwilioLocalSettings
from urllib.parse import urlsplit
devsmtp = DevSmtpSettings()
out["DEV_SMTP_PORT"] = devsmtp.dev_smtp_port
out["SMTP_TARGET"] = f"{mail.smtp_host}:{mail.smtp_port}"
out["SMS_TRANSPORT"] = verify.sms_transport
out["TWILIO_LOCAL_PORT"] = TwilioLocalSettings().twilio_local_port
stripe = urlsplit(billing.stripe_api_base)
local_stripe = stripe.hostname in ("127.0.0.1", "localhost")
out["STRIPE_LOCAL_PORT"] = (stripe.port or 80) if local_stripe else ""
for key, value in out.items():
    print(f"{key}={shlex.quote(str(value))}")
PY
)" || { say "could not read the services' settings (is every service's config.py importable?)"; exit 1; }
eval "$settings_sh"

# Every process of this stack sees the same values: the gateway follows the services' ports,
# mail goes to the local SMTP server, links in emails point at this gateway.
export MSP_DEV_OUTBOX="$DEV_OUTBOX"
export MSP_AUTH_URL="${MSP_AUTH_URL:-http://127.0.0.1:$PORT_auth}"
export MSP_VERIFY_URL="${MSP_VERIFY_URL:-http://127.0.0.1:$PORT_verify}"
export MSP_MAIL_URL="${MSP_MAIL_URL:-http://127.0.0.1:$PORT_mail}"
export MSP_BILLING_URL="${MSP_BILLING_URL:-http://127.0.0.1:$PORT_billing}"
export MSP_PUBLIC_URL="${MSP_PUBLIC_URL:-http://127.0.0.1:$PORT_gateway}"
# Mail goes to the local SMTP server unless MSP_SMTP_HOST/MSP_SMTP_PORT say otherwise.
if [ -z "${MSP_SMTP_HOST:-}${MSP_SMTP_PORT:-}" ]; then
  export MSP_SMTP_HOST=127.0.0.1 MSP_SMTP_PORT="$DEV_SMTP_PORT"
  SMTP_TARGET="127.0.0.1:$DEV_SMTP_PORT"
fi
if [ "$SMS_TRANSPORT" = twilio ]; then
  export MSP_TWILIO_BASE_URL="${MSP_TWILIO_BASE_URL:-http://127.0.0.1:$TWILIO_LOCAL_PORT}"
fi
if [ -n "$STRIPE_LOCAL_PORT" ]; then
  export MSP_STRIPE_LOCAL_PORT="$STRIPE_LOCAL_PORT"
  export MSP_STRIPE_LOCAL_WEBHOOK_URL="${MSP_STRIPE_LOCAL_WEBHOOK_URL:-http://127.0.0.1:$PORT_billing/billing/webhooks/stripe}"
fi
mkdir -p "$MSP_DEV_OUTBOX/mail"

# ---- the database ------------------------------------------------------------------------------
# Created by the msp role (CREATEDB, from bootstrap.sh), which therefore owns it.
DATABASE_URL="$DATABASE_URL" "$PY" - <<'PY' || { say "could not create the database"; exit 1; }
import asyncio, os, re, sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg

url = urlsplit(os.environ["DATABASE_URL"])
name = url.path.lstrip("/")
if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name):
    sys.exit(f"unexpected database name {name!r} in MSP_DATABASE_URL")

async def main():
    conn = await asyncpg.connect(urlunsplit(url._replace(path="/postgres")))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
                print(f"[up] created database {name}", file=sys.stderr)
            except asyncpg.DuplicateDatabaseError:
                pass  # another up.sh won the race
    finally:
        await conn.close()

asyncio.run(main())
PY

for svc in "${SERVICES[@]}"; do
  : >"$LOG_DIR/$svc.log"
done
# Migrations in parallel: each service has its own schema and its own advisory lock.
say "migrating ${SERVICES[*]}"
migrations=()
for svc in "${SERVICES[@]}"; do
  "$PY" -m "msp_$svc" migrate >>"$LOG_DIR/$svc.log" 2>&1 &
  migrations+=("$!")
done
failed=0
for i in "${!SERVICES[@]}"; do
  if ! wait "${migrations[$i]}"; then
    svc="${SERVICES[$i]}"
    say "migration of $svc FAILED; last lines of $LOG_DIR/$svc.log:"
    tail -n 30 "$LOG_DIR/$svc.log" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1

# ---- processes ---------------------------------------------------------------------------------
NAMES=()
PIDS=()
stopping=0

start() {  # start NAME CMD...: its own session (so its whole process group can be signalled)
  local name="$1"; shift
  case "$name" in devsmtp|twilio-local|stripe-local) : >"$LOG_DIR/$name.log" ;; esac  # services' logs hold their migration
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  NAMES+=("$name")
  PIDS+=("$!")
  echo "$name $!" >>"$PID_FILE"
}

stop_all() {  # SIGTERM every process group, give them the grace period, then SIGKILL; reap all
  [ "$stopping" = 1 ] && return 0
  stopping=1
  trap '' INT TERM
  [ "${#PIDS[@]}" -gt 0 ] || { rm -f "$PID_FILE"; return 0; }
  say "stopping ${NAMES[*]}"
  local pid i left grace_end=$((SECONDS + ${MSP_UP_STOP_GRACE:-20}))
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  while :; do
    left=()
    for i in "${!PIDS[@]}"; do alive "${PIDS[$i]}" && left+=("$i"); done
    [ "${#left[@]}" -gt 0 ] && [ "$SECONDS" -lt "$grace_end" ] || break
    sleep 0.2
  done
  for i in "${left[@]}"; do
    say "${NAMES[$i]} ignored SIGTERM: killing it"
    kill -KILL -- "-${PIDS[$i]}" 2>/dev/null || true
  done
  wait "${PIDS[@]}" 2>/dev/null || true  # reap
  rm -f "$PID_FILE"
  say "stopped"
}

died() {  # died INDEX: report a dead process loudly, stop the rest, fail
  local name="${NAMES[$1]}" status=0
  wait "${PIDS[$1]}" 2>/dev/null || status=$?
  say "$name EXITED (status $status); last lines of $LOG_DIR/$name.log:"
  tail -n 40 "$LOG_DIR/$name.log" >&2 || true
  stop_all
  exit 1
}

check_alive() {
  local i
  for i in "${!PIDS[@]}"; do alive "${PIDS[$i]}" || died "$i"; done
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
http_ready() { curl -fsS -o /dev/null -m 2 "$1" 2>/dev/null; }

deadline=$((SECONDS + TIMEOUT))
wait_until() {  # wait_until WHAT CHECK...: poll CHECK, failing if a process dies or time runs out
  local what="$1"; shift
  until "$@"; do
    check_alive
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$what not ready after ${TIMEOUT}s"
      for name in "${NAMES[@]}"; do say "--- $LOG_DIR/$name.log"; tail -n 15 "$LOG_DIR/$name.log" >&2 || true; done
      stop_all
      exit 1
    fi
    sleep 0.3
  done
}

trap 'stop_all; exit 1' EXIT
trap 'stop_all; trap - EXIT; exit 0' INT TERM

# The local stand-ins for outside systems first (the services talk to them), then the
# services, the gateway last.
start devsmtp "$PY" -m msp_mail.devsmtp
wait_until "the local SMTP server (127.0.0.1:$DEV_SMTP_PORT)" tcp_open 127.0.0.1 "$DEV_SMTP_PORT"
if [ "$SMS_TRANSPORT" = twilio ]; then
  start twilio-local "$PY" -m msp_verify.twilio_local
  wait_until "the local Twilio server (127.0.0.1:$TWILIO_LOCAL_PORT)" tcp_open 127.0.0.1 "$TWILIO_LOCAL_PORT"
fi
if [ -n "$STRIPE_LOCAL_PORT" ]; then
  start stripe-local "$PY" -m msp_billing.stripe_local
  wait_until "the local Stripe server (127.0.0.1:$STRIPE_LOCAL_PORT)" tcp_open 127.0.0.1 "$STRIPE_LOCAL_PORT"
fi
for svc in "${SERVICES[@]}"; do
  port_var="PORT_$svc"
  say "starting $svc on 127.0.0.1:${!port_var}"
  start "$svc" "$PY" -m "msp_$svc"
done
for svc in "${SERVICES[@]}"; do
  port_var="PORT_$svc"
  url="http://127.0.0.1:${!port_var}/readyz"
  wait_until "$svc ($url)" http_ready "$url"
done

if [ "$SMS_TRANSPORT" = twilio ]; then
  SMS_WHERE="$MSP_DEV_OUTBOX/sms.jsonl (through the local Twilio server on 127.0.0.1:$TWILIO_LOCAL_PORT)"
else
  SMS_WHERE="$MSP_DEV_OUTBOX/sms.jsonl"
fi
if [ -n "$SEED_EMAIL" ]; then
  LOGIN="$SEED_EMAIL / $SEED_PASSWORD"
else
  LOGIN="none seeded (MSP_SEED_SUPPORT_EMAIL is empty)"
fi
cat <<EOF

SecurePractice is up: http://127.0.0.1:$PORT_gateway

  Support login:   $LOGIN
  Email:           $MSP_DEV_OUTBOX/mail/  (one .eml per mail; mail-service sends to $SMTP_TARGET)
  SMS and calls:   $SMS_WHERE
  Logs:            $LOG_DIR/<name>.log
  Processes:       $(for i in "${!NAMES[@]}"; do printf '%s=%s ' "${NAMES[$i]}" "${PIDS[$i]}"; done)

EOF

if [ "$DETACH" = 1 ]; then
  trap - EXIT INT TERM
  echo "Running in the background; stop it with: bash scripts/down.sh"
  exit 0
fi
echo "Press Ctrl-C to stop."

# Foreground: watch the children; one dying takes the stack down loudly instead of half-running.
while :; do
  check_alive
  sleep 1 &
  wait $! || true
done
