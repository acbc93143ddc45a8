//! The `#[meter]` attribute of [`kinde-meter`](https://docs.rs/kinde-meter).
//!
//! Depend on `kinde-meter` and write `#[kinde_meter::meter(...)]`: the runtime crate
//! re-exports the attribute, and the code it generates calls into the runtime crate.
//! The attribute is documented on [`macro@meter`].
//!
//! Layout: `args` parses and validates the arguments, `item` classifies the function
//! (sync, `async`, returning a future, or rejected), and `expand` generates the code.
use proc_macro::TokenStream;

mod args;
mod expand;
mod item;

/// Bills every call of a function as usage of a Kinde billing feature.
///
/// ```
/// use kinde_meter::meter;
///
/// #[meter(feature = "pdf_exports")]
/// fn export_pdf(report: &str) -> Vec<u8> {
///     report.as_bytes().to_vec()
/// }
/// # let capture = kinde_meter::testing::capture();
/// # let _scope = kinde_meter::enter_agreement("agreement_acme".parse().unwrap());
/// # export_pdf("q3");
/// # assert_eq!(capture.total("agreement_acme", "pdf_exports"), 1);
/// ```
///
/// Each call adds one unit (or `value` units) of the feature to the current customer's
/// billing agreement, in memory; the reporter started with `kinde_meter::init` delivers
/// the totals to Kinde in the background. The call itself never blocks, waits on the
/// network or fails because of metering.
///
/// # Arguments
///
/// ```text
/// #[meter(
///     feature = "code",                       // required
///     value = <expr>,                         // default 1
///     agreement = <expr>,                     // default: the agreement in scope
///     on = "call" | "return" | "ok",          // default "call"
///     meter_type = "delta" | "absolute",      // default "delta"
///     crate = <path>,                         // default ::kinde_meter
/// )]
/// ```
///
/// - **`feature`**: the Kinde billing feature code, a string literal of 1 to 255 ASCII
///   letters, digits, `_`, `-` and `.`.
/// - **`value`**: how many units a call is worth, any integer expression, such as
///   `value = rows.len()` or `value = request.pages`. It is evaluated when the call
///   starts, before the body runs, so it sees the arguments even if the body moves them
///   (and an `async fn` evaluates it when first polled). A literal must be a non-negative
///   integer; a negative value or one above `u64::MAX` at run time is refused (counted as
///   invalid and reported), never truncated.
/// - **`agreement`**: whose usage it is, evaluated when the call starts like `value`. It
///   may be an `AgreementId` or `&AgreementId`, or a `&str`, `String` or `&String` holding
///   an agreement id (validated when recorded; a literal is checked at compile time).
///   Without it, the call bills the *current* agreement: the task scope set with
///   `kinde_meter::with_agreement`, else the thread scope set with
///   `kinde_meter::enter_agreement`, as they are when the call is counted (with
///   `on = "return"` or `"ok"`, when it completes). A call with no agreement at all is
///   never billed to a guessed one: it is counted as *unattributed* and reported.
/// - **`on`**: when a call counts; see below.
/// - **`meter_type`**: `"delta"` adds the value to the current usage; `"absolute"`
///   replaces it (last write wins, for values such as a number of seats).
/// - **`crate`**: the path of the runtime crate, if it is not `::kinde_meter` (you
///   renamed the dependency, or re-export it from another crate).
///
/// # When a call counts: `on`
///
/// | `on` | sync function | `async fn`, or a function returning a future |
/// |---|---|---|
/// | `"call"` (default) | when it is called, before the body runs | when the future is first polled (not when it is created) |
/// | `"return"` | when it returns, including an early `return` or `?` | when the future completes |
/// | `"ok"` | when it returns a success | when the future completes with a success |
///
/// With `"return"` and `"ok"`, a call that panics does not count, and neither does a
/// future that is dropped before it completes (a cancelled request, a timeout). A
/// function may return `Result` or `Option`, or a type of your own that implements
/// `kinde_meter::Outcome`, to use `"ok"`: `Ok` and `Some` are successes, so an error
/// returned with `?` or `return Err(..)` does not count. Using `"ok"` on a function whose
/// return type does not implement `Outcome` is a compile error on that type.
///
/// ```
/// use kinde_meter::{meter, with_agreement, AgreementId};
///
/// struct Store;
///
/// impl Store {
///     /// Bills the rows of each import that succeeds, for the agreement in scope.
///     #[meter(feature = "rows_imported", on = "ok", value = rows.len())]
///     async fn import(&self, rows: Vec<String>) -> Result<usize, String> {
///         if rows.iter().any(String::is_empty) {
///             return Err("empty row".to_owned());
///         }
///         Ok(rows.len())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let capture = kinde_meter::testing::capture();
/// let acme: AgreementId = "agreement_acme".parse().unwrap();
/// with_agreement(acme, async {
///     Store.import(vec!["a".into(), "b".into()]).await.unwrap();
///     Store.import(vec![String::new()]).await.unwrap_err();
/// })
/// .await;
/// # assert_eq!(capture.total("agreement_acme", "rows_imported"), 2);
/// # }
/// ```
///
/// An explicit agreement wins over the one in scope:
///
/// ```
/// use kinde_meter::{meter, AgreementId};
///
/// struct Tenant {
///     agreement: AgreementId,
/// }
///
/// impl Tenant {
///     #[meter(feature = "seats", meter_type = "absolute", value = seats, agreement = &self.agreement)]
///     fn set_seats(&self, seats: u32) {
///         // ...
///     }
/// }
/// # let capture = kinde_meter::testing::capture();
/// # let tenant = Tenant { agreement: "agreement_globex".parse().unwrap() };
/// # tenant.set_seats(12);
/// # assert_eq!(capture.absolute("agreement_globex", "seats"), Some(12));
/// ```
///
/// # What it works on
///
/// Free functions and methods (any receiver: `self`, `&self`, `&mut self`,
/// `self: Box<Self>`, `self: Pin<&mut Self>`), in inherent and trait impls and in trait
/// default methods; sync and `async fn`, including `async fn` in traits; `unsafe fn`,
/// `extern "C" fn`, generics, lifetimes, const generics, `impl Trait` arguments and
/// return types; recursive functions (each call counts).
///
/// # Functions that return a future
///
/// A plain `fn` that returns a future is metered by the futures it returns, as the
/// table above says: they count when they run, never when they are built, and a future
/// dropped without being polled counts for nothing. Every future it returns is metered:
/// the one of its last expression and those of its early `return`s.
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
///
/// use kinde_meter::meter;
///
/// #[meter(feature = "lookups", on = "return")]
/// fn lookup(key: &str) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
///     if key.is_empty() {
///         return Box::pin(std::future::ready(0));
///     }
///     let fut = async move { key.len() };
///     Box::pin(fut)
/// }
/// # let capture = kinde_meter::testing::capture();
/// # let _scope = kinde_meter::enter_agreement("agreement_acme".parse().unwrap());
/// drop(lookup("never polled")); // counts nothing
/// # assert_eq!(capture.total("agreement_acme", "lookups"), 0);
/// ```
///
/// The attribute sees tokens, not types, so it takes a function for one that returns a
/// future when its return type is written `impl Future<..>`, `Pin<Box<dyn Future<..>>>`
/// or `BoxFuture<..>` / `LocalBoxFuture<..>`, or when its last expression is an `async`
/// block or a `Box::pin(..)` (behind an alias such as `-> Self::Future`). Each returned
/// future is then wrapped where it is returned: an `async` block gets the metering
/// inside it, `Box::pin(fut)` becomes a box of the metered `fut` (still one allocation),
/// any other value of a boxed return type is boxed once more, and an `impl Future` is the
/// metered future (`Send` and `Unpin` when yours is; other bounds such as `+ Clone` are
/// not kept). A function whose future the attribute cannot see as one (a named future
/// type such as `JoinHandle<T>`, or an alias with another last expression) is metered
/// like a sync function, when it is called or returns: write its return type as
/// `impl Future<Output = T>` to meter the future.
///
/// This covers what [`async-trait`] generates, so `#[meter]` works on the methods of an
/// `#[async_trait]` impl:
///
/// ```
/// use async_trait::async_trait;
/// use kinde_meter::meter;
///
/// #[async_trait]
/// trait Mailer {
///     async fn send(&self, to: &str) -> Result<(), String>;
/// }
///
/// struct Smtp;
///
/// #[async_trait]
/// impl Mailer for Smtp {
///     #[meter(feature = "emails_sent", on = "ok")]
///     async fn send(&self, to: &str) -> Result<(), String> {
///         # let _ = to;
///         Ok(())
///     }
/// }
/// ```
///
/// (`async-trait` renames arguments written as patterns, such as `(a, b): (u32, u32)`, so
/// `value` and `agreement` can only name plain arguments and `self` there.)
///
/// # In `macro_rules!`
///
/// A macro may write `#[meter(..)]` with any key passed as a fragment (`$f:literal`,
/// `$f:expr`, `$f:tt`, `$v:ident`, `$p:path`, `$crate::..`), also through several
/// macros; a mistake in one is reported on the tokens the macro's caller wrote.
///
/// The function is otherwise unchanged: its signature, visibility, documentation and
/// attributes (`#[must_use]`, `#[track_caller]`, `#[inline]`, lint levels, inner
/// `#![..]` attributes) are kept, futures stay `Send` exactly when they were, no closure
/// is introduced (so `std::panic::Location::caller()` under `#[track_caller]` is still
/// the caller's), and the compiler's warnings and errors about the body point at your
/// code as before. To meter only in some builds, use
/// `#[cfg_attr(feature = "billing", meter(feature = "..."))]`.
///
/// # Compile errors
///
/// Mistakes are reported together, each on the token at fault: a missing, empty or
/// invalid `feature`; an unknown key (with the closest valid one suggested) or a
/// duplicate key; an invalid `on` or `meter_type`; a negative or fractional literal
/// `value`; `on = "ok"` on a function that returns `()` or a type without `Outcome`;
/// `#[meter]` on a `const fn`, on a trait method without a body, or on anything that is
/// not a function.
///
/// ```compile_fail
/// #[kinde_meter::meter(feature = "hashes")]
/// const fn hash(x: u64) -> u64 {
///     x
/// }
/// ```
///
/// # Notes
///
/// - With `on = "ok"` on a sync function, a `return` that a macro expands to (such as
///   `anyhow::bail!`) leaves the function without being seen; that is right for error
///   returns, which do not count, but a macro that returns a success is not counted.
///   Likewise, a future returned by a `return` that a macro expands to is not metered.
/// - Each call site keeps its feature code in a `static`, built at compile time: a call
///   adds its value to the in-memory total of its key and does no formatting, I/O or
///   locking of its own.
///
/// [`async-trait`]: https://docs.rs/async-trait
#[proc_macro_attribute]
pub fn meter(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let args = args::parse(args.into());
    let func = item::classify(item.clone());
    let result = match (args, func) {
        (Ok(args), Ok(func)) => check(&args, &func).map(|()| expand::expand(&args, &func)),
        (Err(mut e), Err(f)) => {
            e.combine(f);
            Err(e)
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
    };
    match result {
        Ok(tokens) => tokens.into(),
        Err(error) => with_error(item, error).into(),
    }
}

/// Checks that need both the arguments and the function.
fn check(args: &args::MeterArgs, func: &item::MeterFn) -> syn::Result<()> {
    let (on, on_span) = args.on;
    if on == args::On::Ok && func.returns_unit() {
        return Err(syn::Error::new(
            on_span,
            format!(
                "`on = \"ok\"` needs a return value that says whether the call succeeded, \
                 but `{}` returns `()`: return a `Result` or an `Option` (or a type that \
                 implements `kinde_meter::Outcome`), or use `on = \"return\"`",
                func.name()
            ),
        ));
    }
    Ok(())
}

/// The errors, and the item untouched so that one mistake does not cascade into errors
/// about a missing function.
fn with_error(item: proc_macro2::TokenStream, error: syn::Error) -> proc_macro2::TokenStream {
    let mut tokens = error.into_compile_error();
    tokens.extend(item);
    tokens
}
