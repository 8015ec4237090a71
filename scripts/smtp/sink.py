"""A real SMTP server for Recur's email tests: aiosmtpd, storing each message.

    python scripts/smtp/sink.py --port PORT --dir DIR [--host 127.0.0.1]

Every message accepted is written to DIR as one file, NANOSECONDS-N.eml (sorted
by arrival), atomically (written aside, then renamed), holding the message as
received after two added headers with the envelope:

    X-Envelope-From: billing@example.com
    X-Envelope-To: ann@example.com

Recipients whose local part starts with `reject-` are refused with 550 and
those starting with `busy-` with 451, each reply echoing the address as real
servers do: the tests check how the mailer classifies and scrubs them.

scripts/test.sh installs aiosmtpd in its venv and starts this; it stops on
SIGTERM or SIGINT.
"""

import argparse
import itertools
import os
import signal
import threading
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject-"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local.startswith("busy-"):
            return "451 4.3.0 <%s>: Temporary failure, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            name = "%020d-%d.eml" % (time.time_ns(), next(self.counter))
        head = "X-Envelope-From: %s\r\nX-Envelope-To: %s\r\n" % (
            envelope.mail_from,
            ", ".join(envelope.rcpt_tos),
        )
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        partial = os.path.join(self.directory, "." + name + ".partial")
        with open(partial, "wb") as f:
            f.write(head.encode("ascii", "replace") + content)
        os.rename(partial, os.path.join(self.directory, name))
        return "250 OK stored as %s" % name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    controller = Controller(Sink(args.dir), hostname=args.host, port=args.port)
    controller.start()
    print("smtp sink on %s:%d storing in %s" % (args.host, args.port, args.dir), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
