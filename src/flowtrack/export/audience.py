"""The audience layout of the message export (ExportLayout
EXPORT_LAYOUT_AUDIENCE): the columns AddRecipients takes, so that a segment
of a campaign (e.g. its failed recipients) is a file that
`flowtrack campaigns add-recipients CAMPAIGN FILE` reads as it is. Pure: no
grpc, no SQL.

| column | from |
|---|---|
| recipient | the recipient |
| channel | the message's channel (from its events, else from the audience) |
| variant | the message's A/B variant (likewise) |
| input_variables | its input variables as a JSON object (compact, keys sorted); blank if none |

Text cells go through export/csv.py's formula neutralisation like every CSV
cell (a leading `'` before `=`, `+`, `-`, `@`, a tab or CR unless the value is
plainly a number or an E.164 phone number); add-recipients takes that `'`
off again.
"""

from __future__ import annotations

from flowtrack.domain.records import MessageRecord
from flowtrack.export.columns import Cell

HEADER = ("recipient", "channel", "variant", "input_variables")


def cells(row: MessageRecord) -> list[Cell]:
    inputs = row.input_vars if row.input_vars and row.input_vars != "{}" else None
    return [row.recipient, row.channel, row.variant, inputs]
