"""Recur's launcher for localstripe 1.15.10: a local fake of Stripe's API that
async-stripe 1.0.0-rc.10 can talk to, for Recur's tests.

    python launcher.py --port 8420        # binds 127.0.0.1 only

It imports localstripe's resources and handlers and serves them from an aiohttp
app of its own. Everything it adds or changes, and why (docs/stripe.md repeats
this list):

1. State: in memory, fresh at each start. localstripe pickles its whole store to
   the fixed file /tmp/localstripe.pickle after every write (shared by every
   instance on the machine, and quadratic in the store's size); the launcher
   neither loads nor writes it.
2. Binding: 127.0.0.1 and the given port (localstripe's CLI binds every
   interface).
3. Fields that async-stripe's strict parsing requires and localstripe leaves
   out, added when absent (never overwriting what localstripe sets):
   - payment intents: amount_capturable, amount_received,
     confirmation_method, payment_method_types;
   - charges: amount_captured, billing_details, disputed, outcome;
   - balance transactions: balance_type;
   - products: images, marketing_features, updated;
   - events: pending_webhooks, request;
   - customers, payment methods, refunds: nothing was missing (checked);
   - cards: the brand from the number (localstripe says `visa` for all), and
     Stripe's test PaymentMethods `pm_card_mastercard` and
     `pm_card_chargeDeclinedInsufficientFunds` besides localstripe's three.
4. Declines as Stripe answers them: HTTP 402 with error `type: card_error`, the
   `code` and the `decline_code` of Stripe's test card (localstripe says
   `invalid_request_error` and gives no decline_code), the charge and the
   payment intent in the error; the same on a payment intent's
   `last_payment_error`.
5. Idempotency keys (localstripe ignores them): a POST with an
   `Idempotency-Key` already seen for the same secret key gets the first
   answer again, byte for byte, with `Idempotent-Replayed: true`; the same key
   with another path or other parameters (compared as a set of form fields,
   whatever their order) gets 400 `idempotency_error`, as Stripe does.
   Concurrent requests with one key run one after the other. Answers of 5xx
   are not kept (Stripe keeps no result for a request that did not run).
6. A minimal Prices API, which localstripe lacks: POST /v1/prices (product,
   currency, unit_amount, recurring[interval], recurring[interval_count],
   lookup_key, nickname, metadata, active), GET /v1/prices/{id}, and
   GET /v1/prices filtered by lookup_keys[], product and active.
7. Balance transactions listed with `created[gt|gte|lt|lte]`, `type` and
   `source` filters (localstripe refuses any filter), newest first, paged.
8. A test hook, not part of Stripe's API: POST /_recur/balance_transactions/{id}
   with the form field `amount` (minor units, signed) changes one balance
   transaction's amount (and so its net), as a provider-side difference for the
   reconciliation tests. It needs the secret key like /v1.
"""

import argparse
import asyncio
import hashlib
import json
import logging
import time
from urllib.parse import parse_qsl

from aiohttp import web

from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.resources import (BalanceTransaction, Charge, Event,
                                   PaymentIntent, PaymentMethod, Product,
                                   StripeObject, List, store,
                                   try_convert_to_bool, try_convert_to_int)

LOCALSTRIPE_VERSION = '1.15.10'

# --- 1. no pickle file --------------------------------------------------------
resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None


# --- 3. fields async-stripe requires -----------------------------------------
def add_defaults(cls, defaults):
    """Wraps cls._export: each field absent (or null) gets defaults[field](obj)."""
    original = cls._export

    def _export(self, expand=None):
        exported = original(self, expand=expand)
        for field, default in defaults.items():
            if exported.get(field) is None:
                exported[field] = default(self)
        return exported

    cls._export = _export


def _succeeded_amount(charge):
    return charge.amount if charge.status == 'succeeded' else 0


add_defaults(PaymentIntent, {
    'amount_capturable': lambda pi: (
        pi.amount if pi.status == 'requires_capture' else 0),
    'amount_received': lambda pi: (
        pi.amount if pi.status == 'succeeded' else 0),
    'confirmation_method': lambda pi: 'automatic',
    'payment_method_types': lambda pi: ['card'],
})
add_defaults(Charge, {
    'amount_captured': lambda ch: (
        _succeeded_amount(ch) if ch.captured else 0),
    'billing_details': lambda ch: {},
    'disputed': lambda ch: False,
    'outcome': lambda ch: (
        {'type': 'authorized', 'network_status': 'approved_by_network',
         'seller_message': 'Payment complete.'}
        if ch.status == 'succeeded' else
        {'type': 'issuer_declined', 'network_status': 'declined_by_network',
         'reason': getattr(ch, '_decline_code', None),
         'seller_message': 'The bank did not return any further details '
                           'with this decline.'}
        if ch.status == 'failed' else None),
})
add_defaults(BalanceTransaction, {
    'balance_type': lambda txn: 'payments',
})
add_defaults(Product, {
    'images': lambda p: [],
    'marketing_features': lambda p: [],
    'updated': lambda p: p.created,
})
add_defaults(Event, {
    'pending_webhooks': lambda e: 0,
    'request': lambda e: {'id': None, 'idempotency_key': None},
})


# --- 3b. cards as Stripe describes them ---------------------------------------
# localstripe calls every card `visa` and knows three of Stripe's test
# PaymentMethods; Recur keeps the brand Stripe gives, and its demo attaches
# `pm_card_mastercard` too.
def brand_of(number):
    if number.startswith('4'):
        return 'visa'
    if number[:2] in ('51', '52', '53', '54', '55') or \
            '2221' <= number[:4] <= '2720':
        return 'mastercard'
    if number[:2] in ('34', '37'):
        return 'amex'
    return 'unknown'


_original_pm_init = PaymentMethod.__init__


def _pm_init(self, *args, **kwargs):
    _original_pm_init(self, *args, **kwargs)
    if getattr(self, 'type', None) == 'card':
        self.card['brand'] = brand_of(self._card_number)


PaymentMethod.__init__ = _pm_init

TEST_METHODS = {
    'pm_card_mastercard': '5555555555554444',
    'pm_card_chargeDeclinedInsufficientFunds': '4000000000009995',
}
_original_canonical = PaymentMethod._try_get_canonical_test_article.__func__


def _canonical(cls, id):
    if id in TEST_METHODS:
        return PaymentMethod(type='card', card=dict(
            number=TEST_METHODS[id], exp_month='12', exp_year='2030',
            cvc='123'))
    return _original_canonical(cls, id)


PaymentMethod._try_get_canonical_test_article = classmethod(_canonical)


# --- 4. declines as Stripe answers them --------------------------------------
# Stripe's test cards (https://docs.stripe.com/testing#declined-payments) that
# localstripe declines: card number -> (code, decline_code).
DECLINES = {
    '4000000000000002': ('card_declined', 'generic_decline'),
    '4000000000009995': ('card_declined', 'insufficient_funds'),
    '4000000000009987': ('card_declined', 'lost_card'),
    '4000000000009979': ('card_declined', 'stolen_card'),
    '4000000000000069': ('expired_card', 'expired_card'),
    '4000000000000127': ('incorrect_cvc', 'incorrect_cvc'),
    '4000000000000119': ('processing_error', 'processing_error'),
    '4242424242424241': ('incorrect_number', 'incorrect_number'),
    # Attach, then decline when charged.
    '4000000000000341': ('card_declined', 'generic_decline'),
    '4000008260003178': ('card_declined', 'insufficient_funds'),
    '4000008400001629': ('card_declined', 'card_declined'),
}
MESSAGES = {
    'insufficient_funds': 'Your card has insufficient funds.',
    'expired_card': 'Your card has expired.',
    'incorrect_cvc': "Your card's security code is incorrect.",
    'processing_error': 'An error occurred while processing your card. '
                        'Try again in a little bit.',
    'incorrect_number': 'Your card number is incorrect.',
}


class CardError(UserError):
    """A 402 with Stripe's `type: card_error` (UserError forces another type)."""

    def __init__(self, code, decline_code, extra):
        message = MESSAGES.get(decline_code, 'Your card was declined.')
        contents = {'code': code, 'decline_code': decline_code,
                    'doc_url': 'https://stripe.com/docs/error-codes/' + code}
        contents.update(extra)
        UserError.__init__(self, 402, message, contents)
        self.body['error']['type'] = 'card_error'


def decline_of(payment_method_id):
    """(code, decline_code) for the card behind a payment method id."""
    try:
        pm = PaymentMethod._api_retrieve(payment_method_id)
    except UserError:
        return ('card_declined', 'generic_decline')
    number = getattr(pm, '_card_number', None)
    return DECLINES.get(number, ('card_declined', 'generic_decline'))


_original_attach = PaymentMethod._api_attach.__func__


def _attach(cls, id, customer=None, **kwargs):
    try:
        return _original_attach(cls, id, customer=customer, **kwargs)
    except UserError as error:
        if error.code != 402:
            raise
        code, decline_code = decline_of(id)
        raise CardError(code, decline_code, {'payment_method': None})


PaymentMethod._api_attach = classmethod(_attach)


def _set_auth_failure(self):
    code, decline_code = decline_of(self.payment_method)
    self.status = 'failed'
    self.failure_code = code
    self.failure_message = MESSAGES.get(decline_code,
                                        'Your card was declined.')
    self._decline_code = decline_code


def _raise_failure(self):
    extra = {'charge': self.id}
    if self.payment_intent:
        pi = PaymentIntent._api_retrieve(self.payment_intent)
        extra['payment_intent'] = pi._export()
    raise CardError(self.failure_code,
                    getattr(self, '_decline_code', 'generic_decline'), extra)


Charge._set_auth_failure = _set_auth_failure
Charge._raise_failure = _raise_failure

_original_pi_error = PaymentIntent.last_payment_error.fget


def _last_payment_error(self):
    error = _original_pi_error(self)
    if error is None:
        return None
    error['type'] = 'card_error'
    charge = self.latest_charge
    if charge is not None and getattr(charge, '_decline_code', None):
        error['decline_code'] = charge._decline_code
    return error


PaymentIntent.last_payment_error = property(_last_payment_error)


# --- 6. a minimal Prices API --------------------------------------------------
class Price(StripeObject):
    object = 'price'
    _id_prefix = 'price_'

    def __init__(self, product=None, currency=None, unit_amount=None,
                 recurring=None, lookup_key=None, nickname=None,
                 metadata=None, active=True, **kwargs):
        if kwargs:
            raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
        unit_amount = try_convert_to_int(unit_amount)
        active = try_convert_to_bool(active)
        try:
            assert type(product) is str and product
            assert type(currency) is str and len(currency) == 3
            assert type(unit_amount) is int and unit_amount >= 0
            assert type(active) is bool
            if recurring is not None:
                assert type(recurring) is dict
                assert set(recurring) <= {'interval', 'interval_count'}
                assert recurring.get('interval') in ('day', 'week', 'month',
                                                      'year')
                recurring['interval_count'] = try_convert_to_int(
                    recurring.get('interval_count', 1))
                assert type(recurring['interval_count']) is int
                assert recurring['interval_count'] >= 1
            assert lookup_key is None or (type(lookup_key) is str
                                          and lookup_key)
            assert nickname is None or type(nickname) is str
            assert metadata is None or type(metadata) is dict
        except AssertionError:
            raise UserError(400, 'Bad request')
        Product._api_retrieve(product)  # 404 if it does not exist
        if lookup_key is not None and any(
                key.startswith('price:') and p.lookup_key == lookup_key
                for key, p in store.items()):
            # Stripe refuses a lookup key in use (unless transferred).
            raise UserError(400, 'A price (`%s`) already uses that lookup key.'
                            % lookup_key, {'code': 'lookup_key_exists'})
        super().__init__()
        self.product = product
        self.currency = currency.lower()
        self.unit_amount = unit_amount
        self.unit_amount_decimal = str(unit_amount)
        self.recurring = None
        if recurring is not None:
            self.recurring = {
                'interval': recurring['interval'],
                'interval_count': recurring['interval_count'],
                'usage_type': 'licensed',
                'meter': None,
                'trial_period_days': None,
            }
        self.type = 'one_time' if recurring is None else 'recurring'
        self.billing_scheme = 'per_unit'
        self.lookup_key = lookup_key
        self.nickname = nickname
        self.metadata = metadata or {}
        self.active = active
        self.tax_behavior = 'unspecified'
        self.tiers_mode = None
        self.transform_quantity = None
        self.custom_unit_amount = None

    @classmethod
    def _api_delete(cls, id):
        raise UserError(405, 'Method Not Allowed')

    @classmethod
    def _api_list_all(cls, url, lookup_keys=None, product=None, active=None,
                      type=None, limit=None, starting_after=None, **kwargs):
        if kwargs:
            raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
        active = try_convert_to_bool(active)
        if isinstance(lookup_keys, str):
            lookup_keys = [lookup_keys]
        li = super()._api_list_all(url, limit=limit,
                                   starting_after=starting_after)
        li._list = [p for p in li._list
                    if (lookup_keys is None or p.lookup_key in lookup_keys)
                    and (product is None or p.product == product)
                    and (active is None or p.active == active)
                    and (type is None or p.type == type)]
        li._list.sort(key=lambda p: p.created, reverse=True)
        return li


# --- 7. balance transactions with filters -------------------------------------
def _balance_list(cls, url='/v1/balance/history', limit=None, starting_after=None, created=None,
                  type=None, source=None, **kwargs):
    if kwargs:
        raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
    tests = []
    if created is not None:
        if not isinstance(created, dict):
            created = {'eq': created}
        ops = {'gt': lambda a, b: a > b, 'gte': lambda a, b: a >= b,
               'lt': lambda a, b: a < b, 'lte': lambda a, b: a <= b,
               'eq': lambda a, b: a == b}
        for op, value in created.items():
            value = try_convert_to_int(value)
            if op not in ops or not isinstance(value, int):
                raise UserError(400, 'Bad request')
            tests.append(lambda t, op=op, value=value: ops[op](t.created,
                                                               value))
    li = List(url, limit=limit, starting_after=starting_after)
    li._list = [t for key, t in store.items()
                if key.startswith('balance_transaction:')
                and all(test(t) for test in tests)
                and (type is None or t.type == type)
                and (source is None or t.source == source)]
    # Newest first, as Stripe; the id breaks ties within a second so that
    # pages never skip or repeat.
    li._list.sort(key=lambda t: (t.created, t.id), reverse=True)
    return li


BalanceTransaction._api_list_all = classmethod(_balance_list)


# --- 8. the test hook ---------------------------------------------------------
async def set_balance_transaction_amount(request):
    data = await server.get_post_data(request) or {}
    amount = try_convert_to_int(data.get('amount'))
    if not isinstance(amount, int) or set(data) != {'amount'}:
        raise UserError(400, 'Send exactly one form field: amount (integer)')
    txn = BalanceTransaction._api_retrieve(request.match_info['id'])
    txn.amount = amount
    return server.json_response(txn._export())


# --- 5. idempotency keys ------------------------------------------------------
IDEMPOTENT = {}   # (secret key, idempotency key) -> (fingerprint, response)
LOCKS = {}        # the same -> asyncio.Lock, so one key runs at a time


def replay(stored):
    status, body, content_type = stored
    response = web.Response(status=status, body=body,
                            content_type=content_type)
    response.headers['Idempotent-Replayed'] = 'true'
    return response


@web.middleware
async def idempotency_middleware(request, handler):
    key = request.headers.get('Idempotency-Key')
    if request.method != 'POST' or not key:
        return await handler(request)
    scope = (request.headers.get('Authorization', ''), key)
    body = await request.read()
    # The parameters, not the bytes: a client may send a map's keys in any
    # order (async-stripe's metadata is a HashMap), and Stripe compares values.
    params = sorted(parse_qsl(body.decode('utf-8', 'replace'),
                              keep_blank_values=True))
    fingerprint = hashlib.sha256(json.dumps(
        [request.path_qs, params]).encode()).hexdigest()
    lock = LOCKS.setdefault(scope, asyncio.Lock())
    async with lock:
        if scope in IDEMPOTENT:
            first_fingerprint, stored = IDEMPOTENT[scope]
            if first_fingerprint != fingerprint:
                raise IdempotencyError(key)
            return replay(stored)
        try:
            response = await handler(request)
        except UserError as error:
            response = error.to_response()
        if response.status < 500:
            IDEMPOTENT[scope] = (fingerprint, (
                response.status, response.body, response.content_type))
        return response


class IdempotencyError(UserError):
    """Stripe's answer to a key reused with other parameters."""

    def __init__(self, key):
        UserError.__init__(self, 400, (
            'Keys for idempotent requests can only be used with the same '
            'parameters they were first used with. Try using a key other '
            "than '%s' if you meant to execute a different request." % key))
        self.body['error']['type'] = 'idempotency_error'


# --- the app ------------------------------------------------------------------
def current(func):
    """The class's attribute now (patched above), for a method that localstripe
    bound into its route table at import time."""
    owner = getattr(func, '__self__', None)
    if owner is None:
        return func
    return getattr(owner, func.__name__)


def build_app():
    app = web.Application(middlewares=[
        server.error_middleware, server.auth_middleware,
        idempotency_middleware])
    # Our routes first: aiohttp takes the first match.
    app.router.add_post('/_recur/balance_transactions/{id}',
                        set_balance_transaction_amount)
    for method, url, func in resources.extra_apis:
        app.router.add_route(method, url,
                             server.api_extra(current(func), url))
    classes = [server.BalanceTransaction, Charge, server.Coupon,
               server.Customer, Event, server.Invoice, server.InvoiceItem,
               PaymentIntent, PaymentMethod, server.Payout, server.Plan,
               Price, Product, server.Refund, server.SetupIntent,
               server.Source, server.Subscription, server.SubscriptionItem,
               server.TaxRate, server.Token]
    for cls in classes:
        plural = '/v1/' + cls.object + 's'
        for method, url, make in (
                ('POST', plural, server.api_create),
                ('GET', plural + '/{id}', server.api_retrieve),
                ('POST', plural + '/{id}', server.api_update),
                ('DELETE', plural + '/{id}', server.api_delete),
                ('GET', plural, server.api_list_all)):
            app.router.add_route(method, url, make(cls, url))
    app.router.add_post('/_config/webhooks/{id}', server.config_webhook)
    app.router.add_delete('/_config/data', server.flush_store)
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--port', type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    store.clear()
    print('localstripe %s (Recur launcher) on http://127.0.0.1:%d, started %d'
          % (LOCALSTRIPE_VERSION, args.port, int(time.time())), flush=True)
    web.run_app(build_app(), host='127.0.0.1', port=args.port,
                print=None, access_log=None)


if __name__ == '__main__':
    main()
