"""``site-agent``: the hospital side of the toolkit."""

from __future__ import annotations

from shared.cli_support import make_app
from shared.errors import EXIT_CODES_HELP
from site_agent.cli import (
    data_commands,
    export_commands,
    fidelity_command,
    generative_commands,
    pacs_commands,
    pretrain_command,
)

app = make_app(
    "site-agent",
    "Site agent for prostate bpMRI: scan and ingest DICOM on premises, train a latent diffusion "
    "model and generate synthetic cases, pretrain the classifier, export signed bundles through "
    "the privacy gate, make phantom data.\n\n"
    "Nothing identifying leaves the site. " + EXIT_CODES_HELP,
)
data_commands.register(app)
generative_commands.register(app)
app.command("pretrain")(pretrain_command.pretrain_cmd)
app.command("fidelity")(fidelity_command.fidelity)
export_commands.register(app)
pacs_commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
