// The mini-program client against a real stack (`wxmp up` on free ports), with `wx.*` played
// by the sandbox: the same flow a phone runs. Run: node --test clients/miniprogram/test/
'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')

const { createClient, WxmpError, TOKEN_KEY } = require('../wxmp.js')
const { createWx } = require('./wx-shim.js')
const { startStack, sandboxPost } = require('../../../tests/node/stack.js')

let stack
before(async () => { stack = await startStack() })
after(async () => { if (stack) await stack.stop() })

const FAST_POLL = { initialMs: 50, maxMs: 400, timeoutMs: 20000 }

function phone (user) {
  const wx = createWx(stack.sandbox, user)
  const api = createClient({ baseUrl: stack.gateway + '/', wx, poll: FAST_POLL })
  return { wx, api }
}

test('login keeps the token; request sends it', async () => {
  const { wx, api } = phone()
  const token = await api.login()
  assert.match(token, /^[A-Za-z0-9_-]{43}$/, 'a 256-bit token, base64url')
  assert.equal(wx.getStorageSync(TOKEN_KEY), token)
  const me = await api.request({ path: '/me' })
  assert.equal(me.openid, wx.openid)
  assert.equal(wx.calls.login, 1)
})

test('request logs in by itself, and once more when the token is no longer valid', async () => {
  const { wx, api } = phone()
  const me = await api.request({ path: '/me' }) // no token yet: logs in first
  assert.equal(wx.calls.login, 1)
  const first = wx.getStorageSync(TOKEN_KEY)
  // Revoke the token behind the client's back: the next call answers 202.
  const res = await fetch(stack.gateway + '/logout', { method: 'POST', headers: { authorization: `Bearer ${first}` } })
  assert.equal((await res.json()).data.revoked, true)
  const again = await api.request({ path: '/me' })
  assert.equal(again.user_id, me.user_id, 'the same WeChat user, logged in again')
  assert.equal(wx.calls.login, 2, 'exactly one re-login')
  assert.notEqual(wx.getStorageSync(TOKEN_KEY), first)
})

test('a second 202 after the re-login is an error, not a loop', async () => {
  const { wx, api } = phone()
  await api.login()
  // A token of the right shape that the gateway never issued, and a login that keeps
  // failing (the code is unknown to the sandbox): 202 on the call, 202 on the re-login.
  wx.setStorageSync(TOKEN_KEY, 'ab'.repeat(32))
  wx.login = (o) => o.success({ code: 'not-a-code-the-sandbox-issued' })
  const err = await api.request({ path: '/me' }).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError, String(err))
  assert.equal(err.code, 202)
  assert.equal(err.status, 401)
})

test('envelope failures reject with their code', async () => {
  const { api } = phone()
  await api.login()
  const err = await api.request({ path: '/orders/20260101NoSuchOrder0000000' }).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError)
  assert.deepEqual([err.code, err.status], [207, 404])
})

test('updateProfile decrypts and stores the profile', async () => {
  const { api } = phone({ profile: { nickName: '小程序', gender: 1, language: 'zh_CN', city: 'Hangzhou', province: 'Zhejiang', country: 'China', avatarUrl: 'https://example.invalid/a.png' } })
  await api.login()
  const profile = await api.updateProfile('to show your name')
  assert.equal(profile.nickname, '小程序')
  assert.equal(profile.city, 'Hangzhou')
  const me = await api.request({ path: '/me' })
  assert.equal(me.nickname, '小程序')
})

test('pay: /pay/, wx.requestPayment with the full parameters, then polling until PAID', async () => {
  const { wx, api } = phone()
  await api.login()
  const order = await api.pay('coffee')
  assert.equal(order.state, 'PAID')
  assert.equal(order.product_id, 'coffee')
  assert.equal(order.amount_fen, 1800, 'the catalog price, from the server')
  assert.ok(order.transaction_id)
  assert.equal(wx.calls.requestPayment, 1)
  assert.equal(wx.lastPayment.trade_state, 'SUCCESS')
  // Paying the same (now paid) order again is refused by the gateway: 209.
  const err = await api.pay({ orderNo: order.order_no }).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError)
  assert.equal(err.code, 209)
  assert.equal(wx.calls.requestPayment, 1, 'no payment sheet for a paid order')
})

test('pay gives up polling with PAY_PENDING when the order never settles', async () => {
  const wx = createWx(stack.sandbox)
  const api = createClient({ baseUrl: stack.gateway, wx, poll: { initialMs: 20, maxMs: 40, timeoutMs: 300 } })
  await api.login()
  // The user closes the payment sheet without paying: the order stays PAYING.
  wx.requestPayment = (o) => o.success({ errMsg: 'requestPayment:ok' })
  const started = Date.now()
  const err = await api.pay('tea').then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError, String(err))
  assert.equal(err.code, 'PAY_PENDING')
  assert.ok(Date.now() - started < 5000)
})

test('a failed payment sheet rejects with WeChat\'s errMsg', async () => {
  const wx = createWx(stack.sandbox)
  const api = createClient({ baseUrl: stack.gateway, wx, poll: FAST_POLL })
  await api.login()
  wx.requestPayment = (o) => o.fail({ errMsg: 'requestPayment:fail cancel' })
  const err = await api.pay({ productId: 'tea' }).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError)
  assert.equal(err.code, 'WX_REQUEST_PAYMENT_FAILED')
  assert.equal(err.msg, 'requestPayment:fail cancel')
})

test('payVirtual: /pay/, wx.requestVirtualPayment with the answered params, then PAID', async () => {
  const { wx, api } = phone()
  await api.login()
  const order = await api.payVirtual('vip_month')
  assert.equal(order.state, 'PAID')
  assert.equal(order.product_id, 'vip_month')
  assert.equal(order.amount_fen, 3000, 'the catalog price, from the server')
  assert.equal(wx.calls.requestVirtualPayment, 1)
  assert.equal(wx.calls.requestPayment, 0, 'no WeChat Pay sheet for virtual goods')
  assert.equal(wx.lastVirtualPayment.errcode, 0)
  assert.equal(order.transaction_id, wx.lastVirtualPayment.wx_order_id)
  // Paying it again is refused by the gateway (209) before any sheet opens.
  const err = await api.payVirtual({ orderNo: order.order_no }).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError)
  assert.equal(err.code, 209)
  assert.equal(wx.calls.requestVirtualPayment, 1)
})

test('payVirtual: a login between /pay/ and the sheet rotates the session_key: WeChat refuses the signature (268490003)', async () => {
  const { wx, api } = phone()
  await api.login()
  const sheet = wx.requestVirtualPayment
  wx.requestVirtualPayment = (o) => { api.login().then(() => sheet(o), o.fail) }
  const err = await api.payVirtual({ productId: 'vip_month' }).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError, String(err))
  assert.equal(err.code, 'WX_REQUEST_VIRTUAL_PAYMENT_FAILED')
  assert.match(err.msg, /268490003/)
  assert.equal(wx.lastVirtualPayment.errcode, 268490003)
})

test('payVirtual of a WeChat Pay product rejects NOT_VIRTUAL_PAYMENT without a sheet', async () => {
  const { wx, api } = phone()
  await api.login()
  const err = await api.payVirtual('tea').then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError, String(err))
  assert.equal(err.code, 'NOT_VIRTUAL_PAYMENT')
  assert.equal(wx.calls.requestVirtualPayment, 0)
})

test('phoneByEncryptedData stores the number', async () => {
  const { wx, api } = phone()
  await api.login()
  const detail = await sandboxPost(stack.sandbox, '/sandbox/user-data',
    { openid: wx.openid, kind: 'phone', phone: '13800138000', countryCode: '86' })
  const profile = await api.phoneByEncryptedData(detail)
  assert.equal(profile.phone, '13800138000')
})

test('phoneByCode sends the getPhoneNumber code to POST /phone/', async () => {
  const { api } = phone()
  await api.login()
  // The getPhoneNumber button's code, as WeChat issues it (the sandbox's /sandbox/phone-code).
  const probe = await fetch(stack.sandbox + '/sandbox/phone-code', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ purePhoneNumber: '13900139000' })
  })
  assert.ok(probe.ok, `sandbox phone-code: HTTP ${probe.status}`)
  const { code } = await probe.json()
  const profile = await api.phoneByCode(code)
  assert.equal(profile.phone, '13900139000')
  // A code is single-use: the second exchange is WeChat's 40029, envelope 221.
  const err = await api.phoneByCode(code).then(() => null, (e) => e)
  assert.ok(err instanceof WxmpError)
  assert.equal(err.code, 221)
})
