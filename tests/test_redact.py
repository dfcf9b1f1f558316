"""Credentials in a storage URI are shown as *** (sweeps.redact): userinfo, credential query parameters, and any
message that quotes them (pyarrow's errors quote the whole URI)."""

import pytest

from sweeps.redact import redact, redact_uri


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("s3://AKID:SECRET@lab/studies/x?region=eu-west-1", "s3://***@lab/studies/x?region=eu-west-1"),
        (
            "s3://lab/x?access_key=AKID&secret_key=SECRET&session_token=TOKEN&region=r",
            "s3://lab/x?access_key=***&secret_key=***&session_token=***&region=r",
        ),
        ("abfs://account@box/x?client_id=app&client_secret=SECRET", "abfs://***@box/x?client_id=app&client_secret=***"),
        ("s3://AKID:SE/CRET@lab/x", "s3://***@lab/x"),  # a secret's unescaped "/" hides nothing
        ("s3://lab/studies/x?region=eu-west-1", "s3://lab/studies/x?region=eu-west-1"),
        ("/home/me/sweeps-out/x", "/home/me/sweeps-out/x"),
        ("sweeps-out/x", "sweeps-out/x"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def test_redact_replaces_every_form_of_each_credential_in_a_message():
    uri = "s3://AKID:SE%2FCRET@lab/x?secret_key=QUERYSECRET&region=r"
    message = f"Invalid URI {uri}; key AKID, secret SE/CRET, SE%2FCRET, QUERYSECRET"
    assert redact(message, uri) == "Invalid URI s3://***@lab/x?secret_key=***&region=r; key ***, secret ***, ***, ***"
    assert redact("nothing to hide in lab/x", uri) == "nothing to hide in lab/x"
