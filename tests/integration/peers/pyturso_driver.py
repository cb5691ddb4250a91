"""Drives pyturso (``turso.sync``) from a test: one JSON command per stdin line, one JSON answer per stdout line.

Runs in its own process because pyturso caches databases per path per process.  Commands:
connect {path, url, token?, long_poll_ms?, remote_key?}, exec {sql, args?}, query {sql, args?}, push, pull,
stats, close.  Answers: {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import sys
import traceback

import turso.sync


def main() -> None:
    conn = None
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "connect":
                remote_key = cmd.get("remote_key")  # base64; Turso's remote (at-rest) encryption, aes256gcm
                conn = turso.sync.connect(
                    cmd["path"],
                    cmd["url"],
                    auth_token=cmd.get("token"),
                    client_name="test-pyturso",
                    long_poll_timeout_ms=cmd.get("long_poll_ms"),
                    remote_encryption_key=remote_key,
                    remote_encryption_cipher=turso.sync.RemoteEncryptionCipher.Aes256Gcm if remote_key else None,
                )
                result = None
            elif op == "exec":
                assert conn is not None
                conn.execute(cmd["sql"], tuple(cmd.get("args", ())))
                conn.commit()
                result = None
            elif op == "query":
                assert conn is not None
                result = [list(r) for r in conn.execute(cmd["sql"], tuple(cmd.get("args", ()))).fetchall()]
            elif op == "push":
                assert conn is not None
                conn.push()
                result = None
            elif op == "pull":
                assert conn is not None
                result = bool(conn.pull())
            elif op == "stats":
                assert conn is not None
                s = conn.stats()
                result = {
                    "received": s.network_received_bytes,
                    "sent": s.network_sent_bytes,
                    "revision": s.revision,
                }
            elif op == "close":
                if conn is not None:
                    conn.close()
                conn = None
                result = None
            else:
                raise ValueError(f"unknown op {op}")
            answer = {"ok": True, "result": result}
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
