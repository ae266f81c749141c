#!/usr/bin/env bash
# Writes the seeds of `v3_notify` and `refund_req_info` with tools independent of the crate:
# OpenSSL signs (SHA256withRSA) and encrypts req_info (AES-256-ECB); pyca/cryptography's AESGCM
# (OpenSSL's EVP AES-256-GCM underneath: `openssl enc` refuses AEAD ciphers) encrypts v3 resources,
# as for the vectors of crates/wechat/tests/pay_v3.rs. Every output is deterministic (RSA PKCS#1
# v1.5, fixed GCM nonces, ECB), so a rerun rewrites the committed files byte for byte.
#
#   bash fuzz/seeds/make-seeds.sh && git status fuzz/seeds
#
# Keys: crates/wechat/testdata/pay_v3 (TEST-ONLY, see its README), APIv3 key and v2 merchant key
# as in the tests. The fuzz targets hold the same keys and NOW = 1800000000.
set -euo pipefail
cd "$(dirname "$0")"
KEYS=../../crates/wechat/testdata/pay_v3
APIV3_KEY=0123456789abcdefghijABCDEFGHIJ01
PUB_KEY_ID=PUB_KEY_ID_0112345678902026120100000000000001
CERT_SERIAL=5157F09EFDC096DE15EBE81A47057A7232F1B8E1
NOW=1800000000

# AES-256-GCM of $1 with the APIv3 key, nonce $2, associated data $3: base64 of ciphertext||tag.
gcm() {
  python3 -c 'import sys, base64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
k, n, ad, p = (a.encode() for a in sys.argv[1:])
print(base64.b64encode(AESGCM(k).encrypt(n, p, ad)).decode())' "$APIV3_KEY" "$2" "$3" "$1"
}

# notify JSON: $1 event_type, $2 original_type, $3 ciphertext, $4 nonce.
notify_body() {
  printf '{"id":"EV-2018022511223320873","create_time":"2027-01-15T16:00:00+08:00","resource_type":"encrypt-resource","event_type":"%s","summary":"summary","resource":{"original_type":"%s","algorithm":"AEAD_AES_256_GCM","ciphertext":"%s","associated_data":"%s","nonce":"%s"}}' \
    "$1" "$2" "$3" "$2" "$4"
}

# One v3_notify seed: Wechatpay-Timestamp, -Nonce, -Signature, -Serial on one line each, then the
# body; the signature is WeChat's: SHA256withRSA over "timestamp\nnonce\nbody\n".
v3_seed() { # $1 file, $2 timestamp, $3 nonce, $4 serial, $5 body
  local sig
  sig=$(printf '%s\n%s\n%s\n' "$2" "$3" "$5" | openssl dgst -sha256 -sign "$KEYS/platform_key.pem" | base64 -w0)
  printf '%s\n%s\n%s\n%s\n%s' "$2" "$3" "$sig" "$4" "$5" >"v3_notify/$1"
}

TX='{"appid":"wxd678efh567hg6787","mchid":"1230000109","out_trade_no":"A1","transaction_id":"4200001","trade_type":"JSAPI","trade_state":"SUCCESS","success_time":"2027-01-15T16:00:00+08:00","payer":{"openid":"o1"},"amount":{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}'
REFUND='{"mchid":"1230000109","out_trade_no":"A1","transaction_id":"4200001","out_refund_no":"R1","refund_id":"50000001","refund_status":"SUCCESS","success_time":"2027-01-15T16:05:00+08:00","user_received_account":"支付用户零钱","amount":{"total":100,"refund":40,"payer_total":100,"payer_refund":40}}'
TX_BODY=$(notify_body TRANSACTION.SUCCESS transaction "$(gcm "$TX" fdasflkjaQWE transaction)" fdasflkjaQWE)
REFUND_BODY=$(notify_body REFUND.SUCCESS refund "$(gcm "$REFUND" 0123456789ab refund)" 0123456789ab)
# The same transaction with the first ciphertext byte flipped (signed, but the GCM tag fails).
BAD_CT=$(gcm "$TX" fdasflkjaQWE transaction | base64 -d | perl -pe 'BEGIN{undef $/} substr($_,0,1) ^= "\x01"' | base64 -w0)
TAMPERED_BODY=$(notify_body TRANSACTION.SUCCESS transaction "$BAD_CT" fdasflkjaQWE)

v3_seed transaction_public_key.txt "$NOW" 5K8264ILTKCH16CQ2502SI8ZNMTM67VS "$PUB_KEY_ID" "$TX_BODY"
v3_seed refund_certificate.txt $((NOW + 120)) c5ac7061fccab6bf3e254dcf98995b8c "$CERT_SERIAL" "$REFUND_BODY"
v3_seed tampered_ciphertext.txt "$NOW" 593BEC0C930BF1AFEB40B4A08C8FB242 "$PUB_KEY_ID" "$TAMPERED_BODY"
v3_seed stale_301s.txt $((NOW - 301)) 5K8264ILTKCH16CQ2502SI8ZNMTM67VS "$PUB_KEY_ID" "$TX_BODY"
# Issue 24: i64::MIN overflowed check_clock (a panic in debug, accepted in release). Signed, so
# a regression would show as an accepted notify, not only as a panic.
v3_seed clock_i64_min.txt -9223372036854775808 5K8264ILTKCH16CQ2502SI8ZNMTM67VS "$PUB_KEY_ID" "$TX_BODY"
v3_seed clock_i64_max.txt 9223372036854775807 5K8264ILTKCH16CQ2502SI8ZNMTM67VS "$CERT_SERIAL" "$TX_BODY"

# refund_req_info: v2 refund notify bodies; req_info is base64(AES-256-ECB/PKCS#7) under the 32
# ASCII bytes of md5hex(merchant key) (the vector of crates/wechat/tests/refund_notify.rs).
req_info() { # $1 plaintext, $2 merchant key
  local hexkey
  hexkey=$(printf '%s' "$2" | md5sum | cut -c1-32 | tr -d '\n' | xxd -p -c 64)
  printf '%s' "$1" | openssl enc -aes-256-ecb -K "$hexkey" -nosalt | base64 -w0
}
refund_body() { # $1 mch_id, $2 req_info
  printf '<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid><mch_id><![CDATA[%s]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str><req_info><![CDATA[%s]]></req_info></xml>' "$1" "$2"
}
V2_KEY=192006250b4c09247ec02edce69f6a2d
PLAIN='<root><out_refund_no><![CDATA[R20261201A1]]></out_refund_no><out_trade_no><![CDATA[20261201abcdEFGH12345678]]></out_trade_no><refund_account><![CDATA[REFUND_SOURCE_RECHARGE_FUNDS]]></refund_account><refund_fee><![CDATA[300]]></refund_fee><refund_id><![CDATA[50000000382019052709732678859]]></refund_id><refund_recv_accout><![CDATA[支付用户零钱]]></refund_recv_accout><refund_request_source><![CDATA[API]]></refund_request_source><refund_status><![CDATA[SUCCESS]]></refund_status><settlement_refund_fee><![CDATA[300]]></settlement_refund_fee><settlement_total_fee><![CDATA[1800]]></settlement_total_fee><success_time><![CDATA[2026-12-01 12:00:05]]></success_time><total_fee><![CDATA[1800]]></total_fee><transaction_id><![CDATA[4200000000202612010000000001]]></transaction_id></root>'
CLOSED='<root><out_refund_no>R2</out_refund_no><out_trade_no>T2</out_trade_no><refund_fee>1</refund_fee><total_fee>1</total_fee><refund_status>REFUNDCLOSE</refund_status></root>'
refund_body 10000100 "$(req_info "$PLAIN" "$V2_KEY")" >refund_req_info/notify_success.xml
refund_body 10000100 "$(req_info "$CLOSED" "$V2_KEY")" >refund_req_info/notify_closed.xml
refund_body 10000100 "$(req_info "$PLAIN" another-merchant-key)" >refund_req_info/notify_other_key.xml
refund_body 10000999 "$(req_info "$PLAIN" "$V2_KEY")" >refund_req_info/notify_other_mch_id.xml
# A bare plaintext: the target also encrypts its input and opens it again.
printf '%s' "$PLAIN" >refund_req_info/plain_root.xml

# bill_csv: the bills crates/wechat's tests use, written by their own independent tool
# (crates/wechat/tests/wechat/fixtures/bills/make.py: python3, amounts from integer fen).
python3 ../../crates/wechat/tests/wechat/fixtures/bills/make.py
for f in v2_all.csv v2_all.csv.gz v2_refund.csv v2_success_nosummary.csv empty_day.csv empty_header_only.csv fund_flow.csv; do
  cp "../../crates/wechat/tests/wechat/fixtures/bills/$f" "bill_csv/$f"
done
# message_push: the vectors of crates/wechat/tests/wechat/fixtures/push (made there with openssl and
# sha1sum by make-vectors.sh), as plaintext bodies and inside safe-mode envelopes.
PUSH=../../crates/wechat/tests/wechat/fixtures/push
mkdir -p message_push
cp "$PUSH/settlement.json" message_push/plain_settlement.json
cp "$PUSH/remind.xml" message_push/plain_remind.xml
printf '{"ToUserName":"gh_0000shipping","Encrypt":"%s"}' "$(cat "$PUSH/settlement.json.encrypt.txt")" >message_push/safe_settlement.json
printf '<xml><ToUserName><![CDATA[gh_0000shipping]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt></xml>' "$(cat "$PUSH/remind.xml.encrypt.txt")" >message_push/safe_remind.xml
cat "$PUSH/settlement.json.encrypt.txt" >message_push/encrypt_only.txt

# xpay_deliver: a delivery push as WeChat documents it, and a partial one.
mkdir -p xpay_deliver
printf '%s' '{"ToUserName":"gh_x","FromUserName":"o1","CreateTime":1765000000,"MsgType":"event","Event":"xpay_goods_deliver_notify","OpenId":"o1","OutTradeNo":"N1","Env":1,"WeChatPayInfo":{"MchOrderNo":"m1","TransactionId":"42","PaidTime":1765000000},"GoodsInfo":{"ProductId":"vip_month","Quantity":1,"OrigPrice":990,"ActualPrice":990,"Attach":""}}' >xpay_deliver/deliver.json
printf '%s' '{"Event":"xpay_goods_deliver_notify","GoodsInfo":{"ProductId":"p"}}' >xpay_deliver/partial.json
