"""The Celery application's delivery and safety settings (docs/architecture.md, "Task")."""

from __future__ import annotations

import os
import ssl

import pytest

from pixelperfect.config import Settings


def test_celery_settings_are_the_safe_ones() -> None:
    from pixelperfect.broker.celery_app import make_celery

    settings = Settings(
        broker_url="redis://:pw@localhost:6379/0", visibility_timeout=7200, worker_soft_shutdown_timeout=45
    )
    conf = make_celery(settings).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.broker_transport_options["unacked_restore_interval"] == 60
    assert conf.worker_soft_shutdown_timeout == 45
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.broker_use_ssl is None
    import pixelperfect.worker.app  # noqa: F401  (what a worker process loads)

    assert os.environ.get("REMAP_SIGTERM") == "SIGQUIT"  # SIGTERM -> cold shutdown with the soft phase


def test_rediss_urls_take_tls_options_and_hide_the_password() -> None:
    from pixelperfect.broker.celery_app import make_celery

    settings = Settings(
        broker_url="rediss://:s3cret@redis.internal:6380/0",
        broker_ssl_ca_certs="/etc/ca.pem",
        broker_ssl_certfile="/etc/client.pem",
        broker_ssl_keyfile="/etc/client.key",
    )
    app = make_celery(settings)
    assert app.conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
    }
    assert "s3cret" not in app.connection_for_write().as_uri()
    none = make_celery(Settings(broker_url="rediss://h:6380/0", broker_ssl_cert_reqs="none")).conf.broker_use_ssl
    assert none == {"ssl_cert_reqs": ssl.CERT_NONE}
    with pytest.raises(ValueError, match="broker_ssl_cert_reqs"):
        Settings(broker_ssl_cert_reqs="maybe")  # type: ignore[arg-type]
