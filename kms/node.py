"""One region node: the event log, the keyring, the clock and the service, wired.

Rules: ``start`` replays and verifies the log before anything is served; ``stop``
drains the writer so every acknowledged append is on disk when it returns.
"""

from __future__ import annotations

from pathlib import Path

import structlog

import kms.service  # noqa: F401  (registers every operation)
from kms.audit.checkpoints import WITNESS_FILE, Checkpointer
from kms.audit.export import EXPORTED_FILE
from kms.audit.signing import AuditSigningKey
from kms.clock import Clock, PersistentClock
from kms.config import Config
from kms.crypto.keyring import Keyring
from kms.crypto.sealing import RootKey
from kms.identity import Credential, Credentials
from kms.schedule import Scheduler
from kms.service.core import Service
from kms.store.log import EventLog
from kms.store.sqlite import SqliteLog

log = structlog.get_logger("kms.node")

LOG_FILE = "events.sqlite3"
DEV_CLOCK_FILE = "dev-clock.json"


class Node:
    def __init__(self, config: Config, *, root_key: RootKey | None = None,
                 clock: Clock | None = None, event_log: EventLog | None = None) -> None:
        self.config = config
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # sealed material inside
        if clock is None:
            clock = PersistentClock(data_dir / DEV_CLOCK_FILE) if config.dev else Clock()
        self.clock = clock
        self.log = event_log or SqliteLog(data_dir / LOG_FILE, config.region)
        # ``kms serve`` passes the key kms.datadir verified against the dir's root-check.
        self.keyring = Keyring(root_key or RootKey.load_or_create(data_dir), self.log.vault)
        # Signs the log's checkpoints and the export's digests; sealed beside the root key.
        self.audit_key = AuditSigningKey.load_or_create(data_dir, self.keyring.root)
        if self.log.checkpointer is None:
            self.log.checkpointer = Checkpointer(
                config.region, self.audit_key, data_dir / WITNESS_FILE,
                rows=config.checkpoint_rows, seconds=config.checkpoint_seconds,
                recheck=config.start_recheck_rows, snapshot_every=config.snapshot_checkpoints)
        self.credentials, self.new_credential = Credentials.load_or_create(
            data_dir, config.account_id, config.principals
        )
        self.service = Service(region=config.region, account=config.account_id,
                               log_=self.log, keyring=self.keyring, clock=self.clock)
        # The policy helper asks whether a principal a key policy names exists.
        self.service.principal_exists = self.credentials.exists  # type: ignore[attr-defined]
        self.scheduler = Scheduler(self.service)
        self.serving = False

    async def start(self) -> None:
        await self.log.open()
        await self.scheduler.run_due()  # what fell due while the node was down
        self.scheduler.start()
        self.serving = True
        log.info("node_started", region=self.config.region, log_seq=self.log.last_seq,
                 keys=len(self.service.state.keys), dev=self.config.dev)

    async def stop(self) -> None:
        self.serving = False
        await self.scheduler.stop()
        await self.log.close()
        log.info("node_stopped", region=self.config.region, log_seq=self.log.last_seq)

    async def reset(self) -> None:
        """Wipe every key, alias and audit fact (``--dev`` only)."""
        async with self.scheduler.paused():
            await self.log.reset()
            self.keyring.clear()
            self.clock.reset()
            # what an export held is gone with the log: a prune must not trust it
            (Path(self.config.data_dir) / EXPORTED_FILE).unlink(missing_ok=True)

    async def advance_clock(self, seconds: float) -> None:
        """Move the clock (``--dev`` only) and act on whatever fell due."""
        self.clock.advance(seconds)
        await self.scheduler.run_due()

    @property
    def root_credential(self) -> Credential | None:
        return self.new_credential
