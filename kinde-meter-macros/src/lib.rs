//! The `#[meter]` attribute of `kinde-meter`. Use it through `kinde_meter::meter`; see the
//! attribute's documentation there.
use proc_macro::TokenStream;

mod args;
mod expand;
mod item;

/// Meters a function (placeholder docs).
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
