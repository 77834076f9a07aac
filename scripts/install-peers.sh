#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks talk to: swaks, Postfix (for smtp-source and
# smtp-sink, never as a running system service), dnsmasq (as a tool, not a service), faketime
# (tests that dates are right on any day of the month), tmux (drives `smtpctl top` in a
# terminal of fixed size), Dovecot's IMAP server (run by the local
# delivery tests as a plain process with a generated config, never as a system service), and the
# Python packages used by tests (aiosmtpd). Idempotent and non-interactive.
set -euo pipefail

need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-core dovecot-imapd)
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v tmux >/dev/null 2>&1 || need+=(tmux)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Forbid service starts while installing: we want the tools, not a system Postfix.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  echo "postfix postfix/mailname string localhost" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$created_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
fi

python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q 'aiosmtpd==1.4.6'
