"""`mssante-connector directory import FILE` and `directory lookup RPPS_OR_ID`.

`import` reads an Annuaire Santé extraction ("Extraction_Correspondance_MSSante", the `.txt` or the
ZIP the ANS serves) into `directory.db` in the data directory, and prints the counts. `Settings`
has no data directory attribute: the directory file is put beside the SQLite store file
(`directory_path`: `[store] path`'s parent, i.e. `data_dir`, `var/` by default). When the
configuration names a whitelist (`[directory] whitelist`), entries outside the trust space are
skipped at import and filtered again at look-up. Exit codes: 0 imported; 1 no valid entry in the
file (the installed directory is kept); 2 configuration error, or a file that cannot be read or is
not an extraction.

`lookup` prints the addresses the rule chooses for an RPPS (11 digits), an IDNPS (`8` + RPPS) or
another national id, one per line: address, BAL type, structure id, tab-separated. This is an
operator tool: addresses go to stdout, never to the logs. `--fhir` asks the Annuaire Santé FHIR
API instead of the imported file (API key in `MSSCONNECTOR_ESANTE_API_KEY`). Exit codes: 0 found;
1 no address (or the remote directory is unavailable); 2 bad identifier, configuration, or no
imported directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from connector.cli._common import add_config_argument, report_config_error, settings_from
from connector.directory.annuaire import (
    Directory,
    DirectoryError,
    DirectoryLookup,
    DirectoryUnavailable,
    ExtractionFormatError,
    ImportReport,
    InvalidIdentifierError,
    MailboxPreference,
    MailboxRule,
    NoValidEntryError,
    directory_path,
    import_extraction,
    resolve,
)
from connector.directory.fhir import API_KEY_ENV, DEFAULT_BASE_URL, FhirDirectory
from connector.directory.whitelist import Whitelist, load_whitelist
from connector.errors import ConfigError
from connector.settings import Settings

_SHOWN_MALFORMED = 10


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "directory", help="the MSSanté directory (Annuaire Santé extraction, RPPS look-ups)")
    inner = parser.add_subparsers(dest="directory_command", required=True, metavar="ACTION")

    imp = inner.add_parser("import", help="import an Extraction_Correspondance_MSSante file")
    add_config_argument(imp)
    imp.add_argument("file", type=Path, help="the extraction .txt, or the ZIP holding it")
    imp.set_defaults(handler=run_import)

    look = inner.add_parser("lookup", help="print the MSSanté addresses of a professional")
    add_config_argument(look)
    look.add_argument("identifier", metavar="RPPS_OR_ID",
                      help="RPPS (11 digits), 8 + RPPS, or another national id (0 + ADELI…)")
    look.add_argument("--rule", choices=[p.value for p in MailboxPreference],
                      default=MailboxPreference.PERSONAL.value,
                      help="which mailboxes to prefer (default: personal)")
    look.add_argument("--structure", metavar="ID", default=None,
                      help="prefer mailboxes of this structure (FINESS, SIRET…)")
    look.add_argument("--fhir", action="store_true",
                      help=f"ask the Annuaire Santé FHIR API (key in ${API_KEY_ENV})")
    look.add_argument("--fhir-url", metavar="URL", default=DEFAULT_BASE_URL,
                      help="FHIR base URL with --fhir (default: %(default)s)")
    look.set_defaults(handler=run_lookup)


def _whitelist(settings: Settings) -> Whitelist | None:
    if settings.whitelist is None:
        print("note: no [directory] whitelist configured: the trust space is not checked",
              file=sys.stderr)
        return None
    return load_whitelist(settings.whitelist)


def run_import(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        whitelist = _whitelist(settings)
        report = import_extraction(args.file, directory_path(settings), whitelist=whitelist)
    except ConfigError as exc:
        return report_config_error(exc)
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ExtractionFormatError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    except NoValidEntryError as exc:
        _print_report(exc.report, installed=False)
        print(str(exc), file=sys.stderr)
        return 1
    _print_report(report, installed=True)
    return 0


def _print_report(report: ImportReport, *, installed: bool) -> None:
    others = report.entries - report.personal - report.organisational
    head = f"imported {report.target}" if installed else "nothing imported"
    print(f"{head}: {report.entries} entries ({report.personal} PER, "
          f"{report.organisational} ORG, {others} other); "
          f"{report.red_listed} red-listed (+{report.red_listed_removed} other lines of "
          f"red-listed holders removed), {report.malformed} malformed, "
          f"{report.outside_trust_space} outside the trust space"
          f"{'' if report.whitelist_checked else ' (not checked)'}; "
          f"{report.duplicate_addresses} duplicate addresses; {report.lines} lines, "
          f"{report.encoding}, {report.elapsed_seconds:.1f} s")
    for problem in report.malformed_lines[:_SHOWN_MALFORMED]:
        print(f"  line {problem.line}: {problem.reason}")
    if report.malformed > _SHOWN_MALFORMED:
        print(f"  … {report.malformed - _SHOWN_MALFORMED} more malformed lines")


def run_lookup(args: argparse.Namespace) -> int:
    rule = MailboxRule(MailboxPreference(args.rule), args.structure)
    lookup: DirectoryLookup | None = None
    try:
        settings = settings_from(args)
        whitelist = _whitelist(settings)
        if args.fhir:
            lookup = FhirDirectory.from_environment(args.fhir_url, whitelist=whitelist)
        else:
            lookup = Directory(directory_path(settings), whitelist=whitelist)
        mailboxes = resolve(lookup, args.identifier, rule)
    except ConfigError as exc:
        return report_config_error(exc)
    except InvalidIdentifierError as exc:
        print(f"{args.identifier!r}: {exc}", file=sys.stderr)
        return 2
    except DirectoryUnavailable as exc:
        print(f"directory unavailable: {exc}", file=sys.stderr)
        return 1
    except DirectoryError as exc:
        print(f"directory error: {exc}", file=sys.stderr)
        return 2
    finally:
        if isinstance(lookup, Directory):
            lookup.close()
    if not mailboxes:
        print("no MSSanté address found", file=sys.stderr)
        return 1
    for mailbox in mailboxes:
        structure = mailbox.structure.identifier if mailbox.structure else ""
        print(f"{mailbox.address}\t{mailbox.mailbox_type.value}\t{structure}")
    return 0
