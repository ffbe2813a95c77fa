//! The one place the host generates bindings from `wit/`, shared by the
//! sandbox (`runtime/`, which calls the task's exports) and the
//! capabilities (`capabilities/`, which implement its imports). WASI
//! interfaces map to wasmtime-wasi's own bindings.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    imports: {
        "housekeeper:task/sql": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
    },
});
