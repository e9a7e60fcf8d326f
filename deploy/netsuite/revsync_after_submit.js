/**
 * revsync's User Event script for NetSuite: after a record is saved, it tells revsync which
 * record changed, so revsync reads it at once instead of at its next poll.
 *
 * Deploy it on the record types revsync reads (Invoice, Item Fulfillment, Customer Payment,
 * Customer). Its afterSubmit posts
 *
 *     {"recordType": "invoice", "id": "1234", "type": "edit", "account": "1234567_SB1"}
 *
 * to revsync's NetSuite endpoint with the header
 *
 *     X-Revsync-Signature: sha256=<HMAC-SHA256 of the body's bytes, hex>
 *
 * under a secret shared with revsync (kept in Setup > Company > API Secrets, restricted to
 * this script). The post carries no record data: revsync reads the record itself through
 * SuiteQL, as its poll does, and writes its events once whichever of the two finds it first.
 * A post that fails is logged and left to the poll; it never stops the user's save.
 *
 * Script parameters (on the script record):
 *   custscript_revsync_endpoint  revsync's URL for these posts (https)
 *   custscript_revsync_secret    the script id of the API secret (custsecret_...)
 *
 * @NApiVersion 2.1
 * @NScriptType UserEventScript
 * @NModuleScope SameAccount
 */
define(['N/https', 'N/crypto', 'N/encode', 'N/runtime', 'N/log'], (https, crypto, encode, runtime, log) => {
    const SIGNATURE_HEADER = 'X-Revsync-Signature';

    /** The parameters of this deployment; a missing one is the deployment's error. */
    const settings = () => {
        const script = runtime.getCurrentScript();
        const endpoint = script.getParameter({ name: 'custscript_revsync_endpoint' });
        const secret = script.getParameter({ name: 'custscript_revsync_secret' });
        if (!endpoint || !secret) {
            throw new Error('revsync: set custscript_revsync_endpoint and custscript_revsync_secret');
        }
        return { endpoint: String(endpoint), secret: String(secret) };
    };

    /** The hex HMAC-SHA256 of ``body`` under the API secret ``secretId``. */
    const signature = (body, secretId) => {
        const key = crypto.createSecretKey({ secret: secretId, encoding: encode.Encoding.UTF_8 });
        const hmac = crypto.createHmac({ algorithm: crypto.HashAlg.SHA256, key: key });
        hmac.update({ input: body, inputEncoding: encode.Encoding.UTF_8 });
        return hmac.digest({ outputEncoding: encode.Encoding.HEX }).toLowerCase();
    };

    const afterSubmit = (context) => {
        // A deleted record has nothing left to read; what revsync published of it stands.
        if (context.type === context.UserEventType.DELETE) {
            return;
        }
        const saved = context.newRecord;
        if (!saved || !saved.id) {
            return;
        }
        try {
            const { endpoint, secret } = settings();
            const body = JSON.stringify({
                recordType: saved.type,
                id: String(saved.id),
                type: String(context.type),
                account: runtime.accountId,
            });
            const headers = { 'Content-Type': 'application/json' };
            headers[SIGNATURE_HEADER] = 'sha256=' + signature(body, secret);
            const response = https.post({ url: endpoint, body: body, headers: headers });
            if (response.code < 200 || response.code >= 300) {
                log.error({
                    title: 'revsync: post refused',
                    details: `HTTP ${response.code} for ${saved.type} ${saved.id}; the poll will read it`,
                });
            }
        } catch (error) {
            log.error({
                title: 'revsync: post failed',
                details: `${error.name}: ${error.message} for ${saved.type} ${saved.id}; the poll will read it`,
            });
        }
    };

    return { afterSubmit };
});
