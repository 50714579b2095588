// Test fixture, not product: a small OpenID Connect provider for tests/test_oidc.py.
//
// npm's oidc-provider with:
// - static users from users.json (password and a `groups` claim each);
// - one confidential client (the hub): CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, with
//   client_secret_post at the token endpoint and PKCE (S256) required;
// - the claims in userinfo, and with ID_TOKEN_CLAIMS=true in the ID token too (as Azure
//   AD does it);
// - a login form and a consent form, plain HTML form posts a test drives with requests;
// - HTTPS only. The test issues the certificate after the container has its address:
//   the server waits for $PROVIDER_DIR/{issuer,tls.crt,tls.key}, then listens on 8443.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';

import Provider from 'oidc-provider';

const PORT = 8443;
const DIR = process.env.PROVIDER_DIR || '/provider';
const USERS = JSON.parse(readFileSync(new URL('./users.json', import.meta.url), 'utf8'));

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`provider: ${name} is required`);
    process.exit(2);
  }
  return value;
}

const client = {
  client_id: required('CLIENT_ID'),
  client_secret: required('CLIENT_SECRET'),
  redirect_uris: [required('REDIRECT_URI')],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  // OAuthenticator's default (basic_auth = False): client_id and secret in the POST body.
  token_endpoint_auth_method: 'client_secret_post',
};

async function waitForFiles(names, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (!names.every((name) => existsSync(`${DIR}/${name}`))) {
    if (Date.now() > deadline) {
      console.error(`provider: ${names.join(', ')} did not appear in ${DIR}`);
      process.exit(2);
    }
    await sleep(200);
  }
}

await waitForFiles(['issuer', 'tls.crt', 'tls.key'], 300);
const issuer = readFileSync(`${DIR}/issuer`, 'utf8').trim();

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

const provider = new Provider(issuer, {
  clients: [client],
  jwks: { keys: [{ ...signingKey.export({ format: 'jwk' }), use: 'sig', kid: 'test' }] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // Keycloak-like: `groups` is its own scope, its claim comes back from userinfo.
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // false: the scopes' claims go into the ID token as well, not only into userinfo.
  conformIdTokenClaims: process.env.ID_TOKEN_CLAIMS !== 'true',
  // PKCE (S256, the only method oidc-provider accepts) for every client, not only public ones.
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const user = Object.hasOwn(USERS, id) ? USERS[id] : undefined;
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: user.name,
          email: `${id}@lab.example.edu`,
          email_verified: true,
          groups: user.groups,
        };
      },
    };
  },
});

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html><html><head><title>${escape(title)}</title></head>` +
    `<body><h1>${escape(title)}</h1>${body}</body></html>`);
}

function loginForm(res, uid, status = 200, error = '') {
  page(res, status, 'Sign in', `${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
  <input name="login" autocomplete="username">
  <input name="password" type="password" autocomplete="current-password">
  <button type="submit">Sign in</button>
</form>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10000) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

// Our own interactions: everything under /interaction/<uid>, the rest is oidc-provider's.
async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, 'Wrong interaction', '');
  const { prompt, params, session } = details;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return loginForm(res, uid);
    const scopes = String(params.scope).split(' ').map((s) => `<li>${escape(s)}</li>`);
    return page(res, 200, 'Authorize', `<p>${escape(params.client_id)} asks for:</p>
<ul>${scopes.join('')}</ul>
<form method="post" action="/interaction/${escape(uid)}/confirm">
  <button type="submit">Allow</button>
</form>`);
  }

  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
    if (!user || form.get('password') !== user.password) {
      return loginForm(res, uid, 401, 'Invalid username or password');
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
  }

  if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const result = { consent: { grantId: await grant.save() } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  }

  return page(res, 400, 'Unexpected request', `<p>${escape(prompt.name)}</p>`);
}

const oidc = provider.callback();
const server = createServer(
  { cert: readFileSync(`${DIR}/tls.crt`), key: readFileSync(`${DIR}/tls.key`) },
  async (req, res) => {
    const match = /^\/interaction\/([\w-]+)(?:\/(login|confirm))?$/.exec(
      new URL(req.url, issuer).pathname,
    );
    if (!match) return oidc(req, res);
    try {
      await interaction(req, res, match[1], match[2]);
    } catch (error) {
      console.error('provider: interaction failed', error);
      if (!res.headersSent) page(res, 400, 'Interaction failed', `<p>${escape(error.message)}</p>`);
    }
  },
);
provider.on('server_error', (ctx, error) => console.error('provider: server_error', error));
provider.on('grant.error', (ctx, error) => console.error('provider: grant.error', error.message));
provider.on('authorization.error', (ctx, error) =>
  console.error('provider: authorization.error', error.message));
server.listen(PORT, '0.0.0.0', () => console.log(`provider: ${issuer} listening on ${PORT}`));
