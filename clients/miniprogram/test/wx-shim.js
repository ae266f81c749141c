// A `wx` for node: each call does what WeChat does for a phone, through the sandbox's
// developer endpoints (the sandbox is WeChat). One shim is one user of the dev app.
'use strict'

const { sandboxPost } = require('../../../tests/node/stack.js')

/** The sandbox's default app (sandbox::DEV_APP_ID). */
const DEV_APP_ID = 'wx00000000000dev01'

/**
 * @param {string} sandbox the sandbox's base URL
 * @param {{openid?: string, profile?: object, appId?: string}} [user] appId: the mini program
 *   this phone runs (WeChat knows it; default the sandbox's dev app)
 */
function createWx (sandbox, user = {}) {
  const storage = new Map()
  const calls = { login: 0, request: 0, requestPayment: 0, requestVirtualPayment: 0, getUserProfile: 0 }
  let openid = user.openid
  const appId = user.appId || DEV_APP_ID
  /** What /sandbox/pay answered to the last requestPayment (the sandbox's order view). */
  let lastPayment = null
  /** What /sandbox/xpay/pay answered to the last requestVirtualPayment. */
  let lastVirtualPayment = null

  const wrap = (name, fn) => (options) => {
    calls[name] += 1
    Promise.resolve()
      .then(() => fn(options))
      .then((r) => options.success && options.success(r),
        (e) => options.fail && options.fail({ errMsg: `${name}:fail ${e.message}` }))
  }

  return {
    calls,
    get openid () { return openid },
    get lastPayment () { return lastPayment },
    get lastVirtualPayment () { return lastVirtualPayment },

    // wx.login(): a fresh single-use code for this user (a new user the first time).
    login: wrap('login', async () => {
      const answer = await sandboxPost(sandbox, '/sandbox/login-code', openid ? { appid: appId, openid } : { appid: appId })
      openid = answer.openid
      return { code: answer.code, errMsg: 'login:ok' }
    }),

    // wx.request(): a real HTTP call; answers like WeChat's (statusCode, data parsed as JSON).
    request: wrap('request', async ({ url, method, data, header }) => {
      const res = await fetch(url, {
        method: method || 'GET',
        headers: header,
        body: data === undefined || method === 'GET' ? undefined : JSON.stringify(data)
      })
      const text = await res.text()
      let body = text
      try { body = JSON.parse(text) } catch (_) { /* WeChat keeps non-JSON as text */ }
      return { statusCode: res.status, data: body, header: Object.fromEntries(res.headers), errMsg: 'request:ok' }
    }),

    // wx.getUserProfile(): the profile encrypted with the user's current session_key.
    getUserProfile: wrap('getUserProfile', async () => {
      if (!openid) throw new Error('not logged in')
      const profile = user.profile || { nickName: 'Node', gender: 2, language: 'zh_CN', city: 'Shenzhen', province: 'Guangdong', country: 'China', avatarUrl: '' }
      return sandboxPost(sandbox, '/sandbox/user-data', { appid: appId, openid, kind: 'userinfo', profile })
    }),

    // wx.requestPayment(): the user pays in the sandbox, which checks paySign over the
    // parameters exactly as the phone does (a wrong one fails like requestPayment:fail).
    requestPayment: wrap('requestPayment', async (p) => {
      lastPayment = await sandboxPost(sandbox, '/sandbox/pay', {
        outcome: 'success',
        appId: p.appId || appId,
        timeStamp: p.timeStamp,
        nonceStr: p.nonceStr,
        package: p.package,
        signType: p.signType,
        paySign: p.paySign
      })
      return { errMsg: 'requestPayment:ok' }
    }),

    // wx.requestVirtualPayment(): the user pays in the sandbox, which checks paySig (the
    // AppKey) and the user-state signature (the session_key it issued to this user) as WeChat
    // does; a refusal fails like the real one, with WeChat's code in errMsg.
    requestVirtualPayment: wrap('requestVirtualPayment', async (p) => {
      lastVirtualPayment = await sandboxPost(sandbox, '/sandbox/xpay/pay', {
        appid: appId,
        openid,
        mode: p.mode,
        signData: p.signData,
        paySig: p.paySig,
        signature: p.signature
      })
      if (lastVirtualPayment.errcode !== 0) {
        throw new Error(`${lastVirtualPayment.errcode} ${lastVirtualPayment.errmsg}`)
      }
      return { errMsg: 'requestVirtualPayment:ok' }
    }),

    getStorageSync: (key) => (storage.has(key) ? storage.get(key) : ''),
    setStorageSync: (key, value) => { storage.set(key, value) },
    removeStorageSync: (key) => { storage.delete(key) }
  }
}

module.exports = { createWx }
