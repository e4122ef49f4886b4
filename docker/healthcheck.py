"""Container health: a Ray raylet runs here (head and workers), and with --gcs PORT the head's GCS answers."""

import os
import socket
import sys


def raylet_running() -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "raylet":
                    return True
        except OSError:
            continue
    return False


def main(argv: list[str]) -> int:
    if not raylet_running():
        print("no raylet process")
        return 1
    if argv[:1] == ["--gcs"]:
        try:
            socket.create_connection(("127.0.0.1", int(argv[1])), timeout=3).close()
        except OSError as exc:
            print(f"GCS port {argv[1]}: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
