"""The command line as a user runs it: real processes, real sockets, real files."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

from connector.cli import main
from tests.conftest import HL7_FIXTURES
from tests.integration.conftest import RunningApp
from tests.integration.test_intake_bad_input import adt


async def run_cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_send_prints_each_ack_and_fails_on_ae(running: RunningApp, tmp_path: Path) -> None:
    host, port = running.address
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\n".join([adt("B1").replace(b"\r", b"\n"), adt("B2"),
                                  adt("B3").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z01")]))
    code, out, _ = await run_cli("send", str(batch), "--host", host, "--port", str(port))
    lines = out.splitlines()
    assert code == 1
    assert len(lines) == 3
    assert lines[0].endswith("MSH-10=B1 AA")
    assert lines[1].endswith("MSH-10=B2 AA")
    assert "MSH-10=B3 AE E: 200 Unsupported message type" in lines[2]


async def test_send_all_fixtures_ok(running: RunningApp) -> None:
    host, port = running.address
    files = sorted(str(p) for p in (HL7_FIXTURES / "pam-fr-2.11").rglob("*.er7"))
    code, out, _ = await run_cli("send", *files, "--host", host, "--port", str(port))
    assert code == 0
    assert out.count(" AA") == len(files)


async def test_send_to_nothing_fails_cleanly(tmp_path: Path) -> None:
    message = tmp_path / "m.hl7"
    message.write_bytes(adt("X") + adt("Y"))
    code, out, err = await run_cli("send", str(message), "--port", "1")
    assert code == 1
    assert "send failed: cannot connect to 127.0.0.1:1: Connection refused" in err
    assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
        "MSH-10=X not sent", "MSH-10=Y not sent"]  # one line per message, as always


async def test_send_says_which_message_the_connection_failed_on(tmp_path: Path) -> None:
    """A peer that closes after the first ACK: the second message says why, the third that it
    was not sent (before, only the first line and a bare error)."""
    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\x1c\r")
        writer.write(b"\x0bMSH|^~\\&|A|B|C|D|20261124||ACK^A01^ACK|1|P|2.5\rMSA|AA|F1\r"
                     b"\x1c\r")
        await writer.drain()
        await reader.readuntil(b"\x1c\r")
        writer.close()

    server = await asyncio.start_server(one_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(adt("F1") + adt("F2") + adt("F3"))
    async with server:
        code, out, _ = await run_cli("send", str(batch), "--port", str(port))
    lines = [line.split(" ", 1)[1] for line in out.splitlines()]
    assert code == 1
    assert lines[0] == "MSH-10=F1 AA"
    assert lines[1].startswith("MSH-10=F2 failed: connection closed before an acknowledgement")
    assert "(a TLS listener? give --tls-ca)" in lines[1]
    assert lines[2] == "MSH-10=F3 not sent"


async def test_send_names_the_tls_option_whose_file_is_wrong(tmp_path: Path) -> None:
    message = tmp_path / "m.hl7"
    message.write_bytes(adt("X"))
    code, out, err = await run_cli("send", str(message), "--tls-ca", str(tmp_path / "nope.pem"))
    assert (code, out) == (2, "")
    assert f"--tls-ca: {tmp_path / 'nope.pem'}: No such file or directory" in err
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"\n")
    code, _, err = await run_cli("send", str(empty))
    assert (code, "no HL7 message in this file" in err) == (2, True)


def test_send_shows_each_errs_severity_and_how_many_more() -> None:
    from connector.cli.send_cmd import _ack_summary

    ack = (b"MSH|^~\\&|A|B|C|D|20261124||ACK^T02^ACK|1|P|2.5\rMSA|AA|M1\r"
           b"ERR||OBX^1^5|207^Application internal error^HL70357|W||||schematron rule\r"
           b"ERR||OBX^2^5|207^Application internal error^HL70357|W||||another\r")
    assert _ack_summary(ack, "M1") == (
        "AA", "W: 207 Application internal error schematron rule (+1 more ERR)")
    refused = ack.replace(b"MSA|AA", b"MSA|AE") + (
        b"ERR||PID^1^3|101^Required field missing^HL70357|E||||no IPP\r")
    assert _ack_summary(refused, "M1") == (
        "AE", "E: 101 Required field missing no IPP (+2 more ERR)")


async def test_send_refuses_client_tls_options_that_would_go_in_clear(tmp_path: Path) -> None:
    message = tmp_path / "m.hl7"
    message.write_bytes(adt("X"))
    code, out, err = await run_cli("send", str(message), "--port", "1", "--tls-cert", "c.pem",
                                   "--tls-key", "k.pem")
    assert code == 2
    assert out == ""
    assert "--tls-ca: is required with --tls-cert/--tls-key" in err


async def test_send_flags_an_ack_for_another_message(tmp_path: Path) -> None:
    """A server that answers an extra ACK shifts every later answer: each is checked against
    the MSH-10 it should acknowledge (MSA-2), and a mismatch is a failure."""
    import asyncio as aio

    async def extra_answer(reader: aio.StreamReader, writer: aio.StreamWriter) -> None:
        await reader.readuntil(b"\x1c\r")
        for code in ("CA", "AA"):  # two answers to the first message
            writer.write(b"\x0bMSH|^~\\&|PFI|CHU|DPI|CHU|20261124||ACK^A01^ACK|A1|P|2.5\rMSA|"
                         + code.encode() + b"|M1\r\x1c\r")
        await writer.drain()
        await reader.readuntil(b"\x1c\r")
        await reader.read()

    server = await aio.start_server(extra_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    batch = tmp_path / "two.hl7"
    batch.write_bytes(adt("M1") + adt("M2"))
    try:
        code, out, _ = await run_cli("send", str(batch), "--port", str(port))
    finally:
        server.close()
    lines = out.splitlines()
    assert lines[0].endswith("MSH-10=M1 CA")
    assert "MSH-10=M2 ?? acknowledges another message (MSA-2 'M1')" in lines[1]
    assert code == 1


def test_check_config_names_the_key(tmp_path: Path, capsys: object) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[tenants]]\nid = "a"\noid = "1.2.3"\n[[tenants.listeners]]\nport = 99999\n')
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert f"{config}: tenants[0].listeners[0].port: must be between 1 and 65535" in err


def test_check_config_ok(tmp_path: Path, capsys: object) -> None:
    config = tmp_path / "good.toml"
    config.write_text('[[tenants]]\nid = "a"\noid = "1.2.3"\n[[tenants.listeners]]\nport = 2575\n')
    assert main(["check-config", str(config)]) == 0
    assert "OK (1 tenant(s), 1 listener(s)" in capsys.readouterr().out  # type: ignore[attr-defined]


async def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[tenants]]\nid = "a"\noid = "1.2.3"\ncolour = "blue"\n')
    code, _, err = await run_cli("serve", "--config", str(config))
    assert code == 2
    assert "tenants[0].colour: unknown key" in err


async def test_serve_says_it_cannot_start_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'data_dir = "{tmp_path / "var"}"\n[admin]\nport = 0\n[[tenants]]\n'
                          f'id = "a"\noid = "1.2.3"\n[[tenants.listeners]]\nport = {port}\n')
        code, _, err = await run_cli("serve", "--config", str(config))
    assert code == 1
    assert "cannot start:" in err
    assert "address already in use" in err
    assert f"tenant 'a' listener 'a-0' (127.0.0.1:{port})" in err  # which one of the file


async def config_with_messages(tmp_path: Path, *payloads: bytes) -> tuple[Path, list[bytes]]:
    """A configuration whose store holds `payloads`, as intake answered them (the answers)."""
    from connector.app import Application
    from connector.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[[tenants]]\nid = "a"\noid = "1.2.3"\n'
                      '[[tenants.listeners]]\nport = 2575\n')
    app = Application.build(load_settings(config))
    app.store.open()
    try:
        answers = [await app.handlers[0].handle(payload, "127.0.0.1:1") or b""
                   for payload in payloads]
    finally:
        await app.store.close()
    return config, answers


async def test_messages_list_and_show(tmp_path: Path) -> None:
    config, _ = await config_with_messages(tmp_path, adt("L1"), b"garbage")
    from connector.app import Application
    from connector.settings import load_settings

    app = Application.build(load_settings(config))
    code, out, _ = await run_cli("messages", "list", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert "MSH-10=L1 accepted AA" in lines[1]
    assert "rejected AE 100" in lines[0]
    assert "PAT-TROIS" not in out  # no patient data in listings
    assert "279035121518989" not in out
    code, out, _ = await run_cli("messages", "list", "--config", str(config),
                                 "--status", "rejected")
    assert len(out.splitlines()) == 1
    row_id = lines[1].split()[0]
    code, out, _ = await run_cli("messages", "show", row_id, "--config", str(config))
    assert code == 0
    assert "MSA|AA|L1" in out
    assert "PID|1||000003" in out  # full detail for the operator
    app.store.open()  # past the retention period: the message goes, its row and ACK stay
    try:
        assert app.retention is not None
        counts = await app.retention.run_once(now=time.time() + 91 * 86400)
    finally:
        await app.store.close()
    assert counts is not None
    assert counts.inbound == 2
    assert app.metrics.store_purged.labels("inbound")._value.get() == 2
    code, out, _ = await run_cli("messages", "show", row_id, "--config", str(config))
    assert code == 0
    assert "MSA|AA|L1" in out
    assert "PID|1||000003" not in out
    assert "--- message: purged " in out


async def test_serve_refuses_a_malformed_whitelist(tmp_path: Path) -> None:
    """The shared 2025-03 list is cut short (its root element is never closed): refused."""
    from tests.conftest import FIXTURES

    config = tmp_path / "c.toml"
    shared_list = FIXTURES / "mssante" / "listeblanchemssante.xml"
    config.write_text(f'[directory]\nwhitelist = "{shared_list}"\n'
                      '[[tenants]]\nid = "a"\noid = "1.2.3"\n')
    code, _, err = await run_cli("serve", "--config", str(config))
    assert code == 2
    assert "listeblanchemssante.xml" in err


async def test_messages_show_decodes_with_the_character_set_intake_used(tmp_path: Path) -> None:
    """An 8859/15 message (MSH-18) is shown as it was read, not as UTF-8 (it was garbled)."""
    latin9 = (adt("L9").replace(b"|2.5", b"|2.5|||||FRA|8859/15", 1).rstrip(b"\r")
              + "\rNTE|1||Réveil à 8h, coût 5€\r".encode("iso8859-15"))
    assert b"|FRA|8859/15" in latin9.split(b"\r")[0]
    config, (answer,) = await config_with_messages(tmp_path, latin9)
    assert b"MSA|AA" in answer
    code, out, _ = await run_cli("messages", "show", "1", "--config", str(config))
    assert code == 0
    assert "NTE|1||Réveil à 8h, coût 5€" in out


async def test_cli_mistakes_are_answered_not_tracebacks(tmp_path: Path) -> None:
    config, _ = await config_with_messages(tmp_path, *(adt(f"P{n}") for n in range(30)))
    code, _, err = await run_cli("audit", "export", "--from", "2020-01-01", "--to", "2100-01-01",
                                 "--out", str(tmp_path / "nodir" / "x.csv"),
                                 "--config", str(config))
    assert (code, "Traceback" in err) == (2, False)
    assert "--out" in err
    code, _, err = await run_cli("audit", "export", "--from", "2100-01-01", "--to", "2020-01-01",
                                 "--config", str(config))
    assert (code, err.strip()) == (2, "--from: must be before --to (the period is empty)")
    process = await asyncio.create_subprocess_shell(  # the reader stops after one line
        f"{sys.executable} -m connector messages list --config {config} | head -1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err_bytes = await process.communicate()
    assert len(out.splitlines()) == 1
    assert b"Traceback" not in err_bytes
    assert b"BrokenPipeError" not in err_bytes


async def test_check_config_takes_the_file_as_the_other_commands_do(tmp_path: Path) -> None:
    config = tmp_path / "good.toml"
    config.write_text('[[tenants]]\nid = "a"\noid = "1.2.3"\n[[tenants.listeners]]\nport = 2575\n')
    code, out, _ = await run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert (code, "OK (1 tenant(s)" in out) == (0, True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector", "check-config", cwd=tmp_path,
        env={**os.environ, "MSSCONNECTOR_CONFIG": str(config)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_bytes, _ = await process.communicate()
    assert (process.returncode, b"OK (1 tenant(s)" in out_bytes) == (0, True)
    code, _, err = await run_cli("check-config", cwd=tmp_path)
    assert (code, "give the file" in err) == (2, True)


def test_the_progress_bar_is_erased_before_each_result_line() -> None:
    """On a terminal the bar (stderr) and the result lines (stdout) share the screen: each
    line starts on an erased line, not after the bar (`[#....] 1/22msgs.hl7#2 ...`)."""
    import io

    from connector.cli.send_cmd import _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = _Progress(20, screen)
    progress.clear()  # nothing drawn yet: nothing to erase
    assert screen.getvalue() == ""
    progress.step()
    assert screen.getvalue().endswith("] 1/20")
    progress.clear()
    assert screen.getvalue().endswith("\r\x1b[K")
    for _ in range(19):
        progress.step()
    assert screen.getvalue().endswith("] 20/20\n")


def test_a_file_captured_with_its_mllp_framing_splits_into_its_messages() -> None:
    from connector.cli.send_cmd import split_messages

    captured = b"\x0b" + adt("W1") + b"\x1c\r" + b"\x0b" + adt("W2") + b"\x1c\r"
    assert split_messages(captured) == [adt("W1"), adt("W2")]


def test_a_tenant_without_listener_is_warned_about(tmp_path: Path) -> None:
    """check-config said OK for a tenant that can receive nothing."""
    import structlog

    from connector.app import Application
    from connector.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[[tenants]]\nid = "a"\noid = "1.2.3"\n'
                      '[[tenants]]\nid = "b"\noid = "1.2.4"\n[[tenants.listeners]]\nport = 2575\n')
    with structlog.testing.capture_logs() as logs:
        Application.build(load_settings(config))
    assert [e["tenant"] for e in logs if e["event"] == "tenant_without_listener"] == ["a"]


async def test_a_command_without_config_says_how_to_reach_the_served_store(
        tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector", "messages", "list", cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MSSCONNECTOR_CONFIG"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 1
    assert b"give --config FILE, or set MSSCONNECTOR_CONFIG" in err
