"""revsync's afterSubmit User Event script (deploy/netsuite/revsync_after_submit.js), run
under Node.js with SuiteScript's N/ modules stood in for: what it posts is what
:meth:`NetSuiteInbound.after_submit` takes, signed as it checks; a delete posts nothing; a
post that fails never fails the user's save."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr

from erp_inbound.netsuite import (
    SIGNATURE_HEADER,
    NetSuiteInbound,
    NetSuiteInboundConfig,
    SignatureInvalid,
)
from erp_inbound.netsuite_mapping import Kind

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js"),
]

SCRIPT = Path(__file__).parents[2] / "deploy" / "netsuite" / "revsync_after_submit.js"
SECRET = "shared-secret-of-the-account"
HARNESS = r"""
// SuiteScript's modules as far as the script uses them, over Node's crypto.
const nodeCrypto = require('crypto');
const [script, secretValue, scenario] = process.argv.slice(2);
const { type, answer, throws, parameters } = JSON.parse(scenario);
const posts = [];
const logs = [];
const modules = {
  'N/https': {
    post: (options) => {
      if (throws) {
        throw Object.assign(new Error('timed out'), { name: 'SSS_CONNECTION_TIME_OUT' });
      }
      posts.push(options);
      return { code: answer };
    },
  },
  'N/encode': { Encoding: { UTF_8: 'UTF_8', HEX: 'HEX' } },
  'N/crypto': {
    HashAlg: { SHA256: 'SHA256' },
    createSecretKey: (options) => {
      if (options.secret !== 'custsecret_revsync_after_submit') throw new Error('unknown secret');
      return { secret: options.secret, value: secretValue };
    },
    createHmac: (options) => {
      const hmac = nodeCrypto.createHmac('sha256', options.key.value);
      return {
        update: (o) => hmac.update(o.input, 'utf8'),
        digest: (o) => hmac.digest('hex').toUpperCase(),  // NetSuite's HEX is upper case
      };
    },
  },
  'N/runtime': {
    accountId: '1234567_SB1',
    getCurrentScript: () => ({ getParameter: (o) => parameters[o.name] }),
  },
  'N/log': { error: (entry) => logs.push(entry) },
};
global.define = (names, factory) => {
  const entry = factory(...names.map((name) => modules[name]));
  entry.afterSubmit({
    type,
    UserEventType: { CREATE: 'create', EDIT: 'edit', DELETE: 'delete' },
    newRecord: { type: 'invoice', id: 1234 },
  });
};
require(script);
process.stdout.write(JSON.stringify({ posts, logs }));
"""
PARAMETERS = {
    "custscript_revsync_endpoint": "https://revsync.example.com/erp/netsuite/after-submit",
    "custscript_revsync_secret": "custsecret_revsync_after_submit",
}


def run(
    tmp_path: Path,
    *,
    type_: str = "edit",
    answer: int = 202,
    throws: bool = False,
    parameters: dict[str, str] = PARAMETERS,
) -> dict[str, Any]:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    scenario = {"type": type_, "answer": answer, "throws": throws, "parameters": parameters}
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, str(harness), str(SCRIPT), SECRET, json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return cast(dict[str, Any], json.loads(done.stdout))


def inbound(secret: str = SECRET) -> NetSuiteInbound:
    config = NetSuiteInboundConfig(
        account_id="1234567_SB1",
        subsidiaries={"US01": "1"},
        timezone="America/Los_Angeles",
        after_submit_secret=SecretStr(secret),
    )
    return NetSuiteInbound(cast(Any, None), cast(Any, None), cast(Any, None), config)


def test_the_script_posts_a_notice_revsync_takes(tmp_path: Path) -> None:
    (post,) = run(tmp_path)["posts"]

    assert post["url"] == PARAMETERS["custscript_revsync_endpoint"]
    body = post["body"].encode()
    source = inbound()
    source.verify(body, post["headers"][SIGNATURE_HEADER])
    assert source.notice(body) == (Kind.INVOICE, "1234", "edit")
    assert post["headers"]["Content-Type"] == "application/json"
    with pytest.raises(SignatureInvalid):
        inbound("another-secret").verify(body, post["headers"][SIGNATURE_HEADER])


def test_a_delete_posts_nothing(tmp_path: Path) -> None:
    assert run(tmp_path, type_="delete") == {"posts": [], "logs": []}


@pytest.mark.parametrize(
    ("changes", "title"),
    [
        ({"answer": 503}, "revsync: post refused"),
        ({"throws": True}, "revsync: post failed"),
        ({"parameters": {}}, "revsync: post failed"),
    ],
)
def test_a_failed_post_is_logged_and_never_fails_the_save(
    tmp_path: Path, changes: dict[str, Any], title: str
) -> None:
    outcome = run(tmp_path, **changes)
    (entry,) = outcome["logs"]
    assert entry["title"] == title
    assert "invoice 1234" in entry["details"]
