"""``site-agent``: the hospital side of the toolkit."""

from __future__ import annotations

from shared.cli_support import make_app
from site_agent.cli import data_commands

app = make_app(
    "site-agent",
    "Site agent for prostate bpMRI: scan and ingest DICOM on premises, make phantom data.\n\n"
    "Nothing identifying leaves the site. Exit codes: 0 ok; 1 internal error (rerun with "
    "--debug); 2 usage; 3 bad input; 4 verification failed; 5 privacy gate refused; "
    "6 nothing usable produced.",
)
data_commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
