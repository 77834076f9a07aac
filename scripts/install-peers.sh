#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks talk to: swaks, Postfix (for smtp-source and
# smtp-sink, never as a running system service), dnsmasq (as a tool, not a service), faketime
# (tests that dates are right on any day of the month), tmux (drives `smtpctl top` and the relay's
# progress bar in a terminal of fixed size), Dovecot's IMAP server (run by the local
# delivery tests as a plain process with a generated config, never as a system service; its POP3
# server for scripts/bench-pop3.sh), OpenLDAP's slapd and ldap-utils (the LDAP login tests start
# slapd as a plain process with a generated config), and the Python packages used by tests
# (aiosmtpd, prometheus-client). Idempotent and non-interactive.
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
[ -x /usr/lib/dovecot/pop3 ] || need+=(dovecot-pop3d) # scripts/bench-pop3.sh
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v ldapadd >/dev/null 2>&1 || need+=(ldap-utils)
# sendmail's callers (issue 17): git send-email and bsd-mailx.
command -v git >/dev/null 2>&1 || need+=(git)
{ git send-email -h 2>&1 || true; } | grep -q sendmail-cmd || need+=(git-email)
command -v bsd-mailx >/dev/null 2>&1 || need+=(bsd-mailx)
# systemd-analyze verify on the units (the package only; no systemd is started).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# smtp-relay's progress bar is checked on a real terminal.
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# The package test: dpkg -i runs postinst, which needs adduser.
command -v adduser >/dev/null 2>&1 || need+=(adduser)

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
  # OpenLDAP's slapd as a tool: no default database, no service (the LDAP tests run it as a
  # plain process with a generated config).
  echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$created_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
fi

python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q 'aiosmtpd==1.4.6'
# The Prometheus text parser the metrics tests check /metrics with (tests/py/scrape.py).
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q 'prometheus-client==0.23.1'
# scripts/bench.sh's plot (scripts/bench_plot.py) and its test.
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q 'matplotlib==3.11.2'

# cargo-deb builds the Debian package (scripts/package.sh, tests/tests/package.rs); pinned, and
# kept in ~/.cargo/bin once built (a few minutes the first time).
CARGO_DEB_VERSION=3.6.3
if command -v cargo >/dev/null 2>&1 &&
   [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  CARGO_INCREMENTAL=0 cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
fi
