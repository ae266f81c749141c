// The sandbox console in a real headless Chromium (Debian's `chromium`), driven over the
// DevTools protocol on a pipe (--remote-debugging-pipe: no websocket library, no npm): a
// pending order is paid by clicking its "pay" button, and the gateway then answers PAID; a
// refund the shop places (`wxmp refund`, held PROCESSING by the sandbox) is settled by
// clicking "settle", and pay-service (`wxmp order`) then reports it SUCCESS; a virtual order
// whose payment sheet is open is failed, then paid, by its buttons, and the gateway answers
// PAID with one delivery push.
'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { execFile, spawn, spawnSync } = require('node:child_process')
const { promisify } = require('node:util')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const { startStack, sandboxPost, eventually } = require('./stack.js')

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'

/** A Chromium with CDP on fds 3 (commands in) and 4 (answers and events out). */
function launchChromium () {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wxmp-chromium-'))
  const child = spawn(CHROMIUM, [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    '--disable-dev-shm-usage', `--user-data-dir=${profile}`, '--remote-debugging-pipe',
    'about:blank'
  ], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => { stderr += d })
  const toChrome = child.stdio[3]
  const fromChrome = child.stdio[4]
  let nextId = 1
  const pending = new Map()
  const listeners = []
  let buffer = Buffer.alloc(0)
  fromChrome.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk])
    let end
    while ((end = buffer.indexOf(0)) >= 0) {
      const message = JSON.parse(buffer.subarray(0, end).toString('utf8'))
      buffer = buffer.subarray(end + 1)
      if (message.id && pending.has(message.id)) {
        const { resolve, reject } = pending.get(message.id)
        pending.delete(message.id)
        if (message.error) reject(new Error(JSON.stringify(message.error)))
        else resolve(message.result)
      } else if (message.method) {
        for (const l of listeners.slice()) l(message)
      }
    }
  })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  exited.then(() => {
    for (const { reject } of pending.values()) reject(new Error(`chromium exited:\n${stderr}`))
  })

  /** Sends one CDP command (to a page when sessionId is given). */
  function send (method, params = {}, sessionId) {
    const id = nextId++
    const message = { id, method, params }
    if (sessionId) message.sessionId = sessionId
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject })
      toChrome.write(JSON.stringify(message) + '\0')
    })
  }

  /** The next event `method` of `sessionId`, within `ms`. */
  function nextEvent (method, sessionId, ms = 15000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${method} in ${ms} ms`)), ms)
      const l = (m) => {
        if (m.method === method && m.sessionId === sessionId) {
          clearTimeout(timer)
          listeners.splice(listeners.indexOf(l), 1)
          resolve(m.params)
        }
      }
      listeners.push(l)
    })
  }

  async function close () {
    await send('Browser.close').catch(() => {})
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5000))])
    if (child.exitCode === null) child.kill('SIGKILL')
    fs.rmSync(profile, { recursive: true, force: true })
  }

  return { send, nextEvent, close }
}

let stack
before(async () => { stack = await startStack() })
after(async () => { if (stack) await stack.stop() })

const chromiumMissing = !fs.existsSync(CHROMIUM) || spawnSync(CHROMIUM, ['--version']).status !== 0
if (chromiumMissing && process.env.CI) {
  throw new Error(`${CHROMIUM} is required in CI (.ci/run installs Debian's chromium)`)
}
const skip = chromiumMissing && `SKIPPED: no ${CHROMIUM} (apt-get install chromium; .ci/run does)`

/** The gateway's JSON answer. */
async function gw (p, init) {
  return (await fetch(stack.gateway + p, init)).json()
}

/** A logged-in mini program user with a pending order (POST /pay/ answered, not paid). */
async function pendingOrder () {
  const { code } = await sandboxPost(stack.sandbox, '/sandbox/login-code', {})
  const login = await gw('/login/', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ code }) })
  const auth = { authorization: `Bearer ${login.data.token}`, 'content-type': 'application/json' }
  const pay = await gw('/pay/', { method: 'POST', headers: auth, body: JSON.stringify({ product_id: 'coffee' }) })
  assert.equal(pay.code, 200, JSON.stringify(pay))
  const orderNo = pay.data.order_no
  assert.equal((await gw(`/orders/${orderNo}`, { headers: auth })).data.state, 'PAYING')
  return { orderNo, auth }
}

/** One page of `chrome` on the console: load it, read it, click its buttons. */
async function openConsole (chrome) {
  const { targetId } = await chrome.send('Target.createTarget', { url: 'about:blank' })
  const { sessionId } = await chrome.send('Target.attachToTarget', { targetId, flatten: true })
  await chrome.send('Page.enable', {}, sessionId)
  const evaluate = async (expression) => {
    const r = await chrome.send('Runtime.evaluate', { expression, returnByValue: true }, sessionId)
    if (r.exceptionDetails) throw new Error(JSON.stringify(r.exceptionDetails))
    return r.result.value
  }
  const load = async () => {
    const loaded = chrome.nextEvent('Page.loadEventFired', sessionId)
    await chrome.send('Page.navigate', { url: stack.sandbox + '/' }, sessionId)
    await loaded
  }
  /** Clicks the button `action` of row `key`; resolves once the console has loaded again. */
  const click = async (action, key) => {
    const reloaded = chrome.nextEvent('Page.loadEventFired', sessionId)
    const clicked = await evaluate(`(() => {
      const b = document.querySelector('button[data-action="${action}"][data-key="${key}"]')
      if (!b) return false
      b.click()
      return true
    })()`)
    assert.equal(clicked, true, `a "${action}" button for ${key}`)
    await reloaded
    return evaluate(`document.getElementById('flash')?.textContent || ''`)
  }
  await load()
  return { evaluate, load, click }
}

/** Pays `orderNo` by clicking "pay" and waits until the gateway says PAID. */
async function payInConsole (page, orderNo, auth) {
  const stateOf = `document.querySelector('.trade-state[data-order="${orderNo}"]')?.textContent`
  assert.equal(await page.evaluate(stateOf), 'NOTPAY', 'the console lists the pending order')
  assert.match(await page.click('pay', orderNo), /^paid /)
  assert.equal(await page.evaluate(stateOf), 'SUCCESS')
  // WeChat's notify reaches the gateway: the mini program sees PAID.
  return eventually(async () => {
    const o = await gw(`/orders/${orderNo}`, { headers: auth })
    return o.data && o.data.state === 'PAID' && o.data
  }, 20000, `order ${orderNo} PAID`)
}

const execFileP = promisify(execFile)

/** `wxmp <args>` against this stack's pay-service: its stdout. */
async function wxmp (...args) {
  const env = Object.assign({}, process.env, { WXMP_PAY_URL: stack.pay, RUST_LOG: 'warn' })
  delete env.WXMP_INTERNAL_TOKEN
  const { stdout } = await execFileP(stack.bin, args, { env, timeout: 30000 })
  return stdout
}

test('clicking "pay" on a pending order in the console makes it PAID through the gateway',
  { skip },
  async () => {
    const { orderNo, auth } = await pendingOrder()
    const chrome = launchChromium()
    try {
      const page = await openConsole(chrome)
      assert.ok(await page.evaluate(`document.body.innerText.includes('session_key age')`))
      const paid = await payInConsole(page, orderNo, auth)
      assert.ok(paid.transaction_id)

      // The console shows the accepted notify once the page is loaded again.
      await page.load()
      assert.match(await page.evaluate(`document.querySelector('.trade-state[data-order="${orderNo}"]').closest('tr').innerText`), /accepted/)
    } finally {
      await chrome.close()
    }
  })

test('clicking "settle" on a PROCESSING refund makes it SUCCESS in pay-service',
  { skip },
  async () => {
    const { orderNo, auth } = await pendingOrder()
    const chrome = launchChromium()
    try {
      const page = await openConsole(chrome)
      await payInConsole(page, orderNo, auth)

      // WeChat keeps the shop's refund PROCESSING (as real refunds stay for minutes) until
      // the console settles it.
      await sandboxPost(stack.sandbox, '/sandbox/faults', { refund_hold: true, path_prefix: '/secapi/' })
      const outRefundNo = `RF${orderNo}`.slice(0, 64)
      let placed
      try {
        placed = await wxmp('refund', orderNo, '--amount-fen', '600', '--reason', 'console test',
          '--out-refund-no', outRefundNo)
      } finally {
        await fetch(stack.sandbox + '/sandbox/faults', { method: 'DELETE' })
      }
      assert.match(placed, new RegExp(`refund ${outRefundNo} PROCESSING 6\\.00 yuan`), placed)
      assert.match(await wxmp('order', orderNo), new RegExp(`refund ${outRefundNo} PROCESSING`))

      await page.load()
      const statusOf = `document.querySelector('.refund-status[data-refund="${outRefundNo}"]')?.textContent`
      assert.equal(await page.evaluate(statusOf), 'PROCESSING', 'the console lists the refund')
      assert.equal(await page.click('settle', outRefundNo), `refund ${outRefundNo} is SUCCESS, notify sent`)
      assert.equal(await page.evaluate(statusOf), 'SUCCESS')

      // WeChat's refund notify (encrypted req_info) reaches the gateway → pay-service.
      const order = await eventually(async () => {
        const out = await wxmp('order', orderNo)
        return new RegExp(`refund ${outRefundNo} SUCCESS 6\\.00 yuan`).test(out) && out
      }, 20000, `refund ${outRefundNo} SUCCESS in pay-service`)
      assert.match(order, /refunded 6\.00 yuan/)
      await page.load()
      assert.match(await page.evaluate(`document.querySelector('.refund-status[data-refund="${outRefundNo}"]').closest('tr').innerText`), /accepted/)
    } finally {
      await chrome.close()
    }
  })

/** A logged-in user whose virtual order's payment sheet is open (the sandbox holds it unpaid). */
async function pendingVirtualOrder () {
  const { code, openid } = await sandboxPost(stack.sandbox, '/sandbox/login-code', {})
  const login = await gw('/login/', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ code }) })
  const auth = { authorization: `Bearer ${login.data.token}`, 'content-type': 'application/json' }
  const pay = await gw('/pay/', { method: 'POST', headers: auth, body: JSON.stringify({ product_id: 'vip_month' }) })
  assert.equal(pay.code, 200, JSON.stringify(pay))
  assert.equal(pay.data.mode, 'short_series_goods', 'a virtual-payment product')
  const orderNo = pay.data.order_no
  // wx.requestVirtualPayment with the answered params; the sheet stays open (hold).
  const sheet = await sandboxPost(stack.sandbox, '/sandbox/xpay/pay', {
    openid, mode: pay.data.mode, signData: pay.data.signData, paySig: pay.data.paySig, signature: pay.data.signature, hold: true
  })
  assert.equal(sheet.errcode, 0, JSON.stringify(sheet))
  assert.equal(sheet.status, 1)
  assert.equal((await gw(`/orders/${orderNo}`, { headers: auth })).data.state, 'PAYING')
  return { orderNo, auth }
}

test('clicking "fail virtual" then "pay virtual" on a pending virtual order: unpaid, then PAID and delivered once',
  { skip },
  async () => {
    const { orderNo, auth } = await pendingVirtualOrder()
    const chrome = launchChromium()
    try {
      const page = await openConsole(chrome)
      const statusOf = `document.querySelector('.xpay-status[data-order="${orderNo}"]')?.textContent`
      assert.equal(await page.evaluate(statusOf), '1 pending (sheet open)', 'the console lists the virtual order')

      assert.match(await page.click('fail virtual', orderNo), /payment failed; nothing paid$/)
      assert.equal(await page.evaluate(statusOf), '1 payment failed')
      assert.equal((await gw(`/orders/${orderNo}`, { headers: auth })).data.state, 'PAYING', 'nothing paid')

      // The user tries again and pays: WeChat pushes xpay_goods_deliver_notify to the gateway.
      assert.match(await page.click('pay virtual', orderNo), /paid; xpay_goods_deliver_notify sent$/)
      const paid = await eventually(async () => {
        const o = await gw(`/orders/${orderNo}`, { headers: auth })
        return o.data && o.data.state === 'PAID' && o.data
      }, 20000, `virtual order ${orderNo} PAID`)
      assert.equal(paid.amount_fen, 3000)

      // The push was answered "success" once: WeChat shows the order delivered.
      await eventually(async () => {
        await page.load()
        return (await page.evaluate(statusOf)) === '4 delivered'
      }, 20000, `virtual order ${orderNo} delivered in the console`)
      const pushes = await (await fetch(stack.sandbox + '/sandbox/shipping')).json()
      const ours = pushes.pushes.filter((p) => p.event === 'xpay_goods_deliver_notify' && p.transaction_id === paid.transaction_id)
      assert.equal(ours.length, 1, JSON.stringify(ours))
      assert.equal(ours[0].outcome, 'success')
      assert.equal(await page.evaluate(`!!document.querySelector('button[data-action="pay virtual"][data-key="${orderNo}"]')`), false,
        'no pay button on a paid order')
    } finally {
      await chrome.close()
    }
  })
