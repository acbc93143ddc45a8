//! Generates the metered function. No validation happens here: the arguments and the item
//! were checked by `args` and `item`.
//!
//! Conventions:
//! - The signature, attributes and visibility are printed as written; the new body reuses
//!   the original braces, and the user's block is kept whole, nested inside it, so its
//!   spans (and the lints and errors on it) stay the user's.
//! - Generated locals and labels are `Span::mixed_site()` (they cannot clash with the
//!   user's names); generated paths are call-site and absolute.
//! - No closures, so `#[track_caller]` and `Location::caller()` keep working.
//! - `#[allow]`s sit on generated statements only, never on the user's block.

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{Ident, Lifetime};

use crate::args::{MeterArgs, MeterKind, On};
use crate::item::{MeterFn, Returned, Shape};

/// The metered function.
pub(crate) fn expand(args: &MeterArgs, func: &MeterFn) -> TokenStream {
    let krate = match &args.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::kinde_meter),
    };
    let private = quote!(#krate::__private);
    let site = Ident::new("__KINDE_METER_SITE", Span::mixed_site());
    let pending = Ident::new("__kinde_meter_pending", Span::mixed_site());

    let feature = &args.feature;
    let meter_type = match args.meter_type {
        MeterKind::Delta => quote!(Delta),
        MeterKind::Absolute => quote!(Absolute),
    };
    let agreement = match (&args.agreement, &args.customer) {
        (Some(expr), _) => expr.to_token_stream(),
        (None, Some(expr)) => quote!(#private::for_customer(#expr)),
        (None, None) => quote!(#private::CurrentAgreement),
    };
    let value = match &args.value {
        Some(expr) => expr.to_token_stream(),
        None => quote!(1u64),
    };

    // A literal only: a static in a generic function or impl must not mention `Self` or
    // the generics.
    let site_decl = quote! {
        static #site: #private::CallSite =
            #private::CallSite::new(#feature, #private::MeterType::#meter_type);
    };
    // The agreement and the value are evaluated here, at the start of the call, before
    // the body can move the arguments they read. A `let` of its own, so their
    // temporaries are dropped before the body runs.
    let start_pending = quote! {
        let #pending = #private::Pending::new(&#site, #agreement, #value);
    };

    let on = args.on.0;
    let body = match (func.shape, on) {
        (Shape::Sync | Shape::Async, On::Call) => {
            let block = func.block();
            quote! {
                #private::record(&#site, #agreement, #value);
                #block
            }
        }
        (Shape::Sync, On::Return) => {
            let guard = Ident::new("__kinde_meter_guard", Span::mixed_site());
            let block = func.block();
            quote! {
                let #guard = #private::Pending::new(&#site, #agreement, #value).on_return();
                #block
            }
        }
        (Shape::Sync, On::Ok) => {
            let label = Lifetime::new("'__kinde_meter_body", Span::mixed_site());
            let ret = Ident::new("__kinde_meter_ret", Span::mixed_site());
            let block = func.block_with_returns_as_breaks(&label);
            let output = func.erased_output();
            // The start of the call is a statement of the `let`'s initializer, before the
            // body: clippy's `diverging_sub_expression` would otherwise take a body that is
            // only `return x;` (now a `break`) or `panic!()` for a sub-expression of the
            // `let`.
            quote! {
                let #pending: #private::Pending;
                let #ret: #output = {
                    #pending = #private::Pending::new(&#site, #agreement, #value);
                    #block
                };
                #[allow(unreachable_code)]
                if <#output as #private::Outcome>::is_success(&#ret) {
                    #pending.finish();
                }
                #[allow(unreachable_code, clippy::implicit_return)]
                #ret
            }
        }
        (Shape::Async, On::Return) => {
            let fake_return = fake_return(&func.erased_output());
            let block = func.block();
            let fut = Ident::new("__kinde_meter_future", Span::mixed_site());
            quote! {
                #start_pending
                let #fut = #pending.on_return_future(async move {
                    #fake_return
                    #block
                });
                #[allow(clippy::implicit_return)]
                #fut.await
            }
        }
        (Shape::Async, On::Ok) => {
            let output = func.erased_output();
            let fake_return = fake_return(&output);
            let block = func.block();
            let wrapped = on_ok_future_at(
                &output,
                &pending,
                quote! {
                    #fake_return
                    #block
                },
            );
            quote! {
                #start_pending
                #wrapped
            }
        }
        (Shape::ReturnsFuture, on) => {
            let at = first_token(&func.erased_output());
            // Called once per returned future; each moves `pending`, which is fine as they
            // are on different paths (a `return` leaves the function).
            let block = func.block_with_futures(|returned| match (on, returned) {
                (On::Call, Returned::Block(inner)) => {
                    inner.with_prelude(quote!(#pending.finish();))
                }
                (On::Call, Returned::Future(fut)) => quote!(#pending.on_first_poll(#fut)),
                (On::Return, Returned::Block(inner)) => {
                    let inner = inner.tokens();
                    quote!(#pending.on_return_future(#inner))
                }
                (On::Return, Returned::Future(fut)) => quote!(#pending.on_return_future(#fut)),
                // The bound `Output: Outcome` is reported at the argument: on the output
                // type (see `on_ok_future_at`). When the future is boxed, the coercion to
                // the declared `dyn Future` fails too, on the `Box::pin`.
                (On::Ok, Returned::Block(inner)) => {
                    let inner = inner.respanned(at);
                    quote!(#pending.on_ok_future(#inner))
                }
                (On::Ok, Returned::Future(fut)) => {
                    // A block's span is that of its braces: the same error location.
                    let mut fut = Group::new(Delimiter::Brace, fut);
                    fut.set_span(at);
                    quote!(#pending.on_ok_future(#fut))
                }
            });
            quote! {
                #start_pending
                #block
            }
        }
    };

    let inner_attrs = func.inner_attrs();
    let mut out = func.head();
    func.brace().surround(&mut out, |tokens| {
        tokens.extend(quote! {
            #inner_attrs
            #site_decl
            #body
        });
    });
    out
}

/// A dead `return` of the declared type at the top of an `async` block, so that `return`,
/// `?` and `.collect()` in the body infer the function's return type as they did before
/// the body moved into the block, and type errors stay on the user's lines.
fn fake_return(output: &TokenStream) -> TokenStream {
    let fake = Ident::new("__kinde_meter_fake_return", Span::mixed_site());
    quote! {
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::let_with_type_underscore,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let #fake: #output = loop {};
            return #fake;
        }
    }
}

/// `#pending.on_ok_future(async move { #stmts })`, awaited, with the keywords and
/// delimiters (no identifiers) located on the first token of `output`, the user's return
/// type.
///
/// If the output does not implement `Outcome`, rustc reports the bound of `on_ok_future`
/// at its argument (the `async` block), and the bound of `OnOk: Future` at the `await`.
/// With both at the same place, rustc shows one error, on the return type. (One token,
/// not the whole type: the span of an `await` is that of its keyword, and a proc macro on
/// stable cannot join spans.) Identifiers keep generated spans, so that an IDE does not
/// take them for the type; the statements keep their own spans.
fn on_ok_future_at(output: &TokenStream, pending: &Ident, stmts: TokenStream) -> TokenStream {
    let at = first_token(output);
    let fut = Ident::new("__kinde_meter_future", Span::mixed_site());
    let mut block = Group::new(Delimiter::Brace, stmts);
    block.set_span(at);
    let async_block = quote_spanned!(at=> async move #block);
    let dot_await = quote_spanned!(at=> .await);
    quote! {
        let #fut = #pending.on_ok_future(#async_block);
        #[allow(clippy::implicit_return)]
        #fut #dot_await
    }
}

/// The span of the first token of `tokens`, resolving as generated code.
fn first_token(tokens: &TokenStream) -> Span {
    let first = tokens.clone().into_iter().next();
    first.map_or_else(Span::call_site, |tt| {
        tt.span().resolved_at(Span::call_site())
    })
}
