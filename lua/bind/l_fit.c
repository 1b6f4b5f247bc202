/* l_fit.c — sl.fit_c: a thin binding over GSL for the scaling-law fits and
 * statistics of sparselab.fit and sparselab.stats (DESIGN §9, card
 * sparse_frontier): nonlinear least squares with the trust-region solver
 * (gsl_multifit_nlinear), exact linear least squares (gsl_multifit_linear),
 * and the normal distribution function.
 *
 *   sl.fit_c.nls{x =, y =, model =, p0 =, weights =, max_iter =, xtol =, gtol =, ftol =}
 *     x: n rows, each a table of predictors;
 *     model: "linear"  y = Σ_j p_j·x_j           (k = p predictors, Jacobian X)
 *            "power"   y = p1·x1^p2 + p3          (x1 > 0, analytic Jacobian)
 *            "power0"  y = p1·x1^p2               (x1 > 0, analytic Jacobian)
 *            a function model(params, xrow) → yhat, params a table p[1..p] and
 *            xrow the row x[i] as given; its Jacobian is by forward differences.
 *     → {params, cov (p×p, (JᵀWJ)⁻¹ at the optimum scaled by rss/(n−p)), rss
 *        (weighted), dof, fitted (unweighted model values), iterations, status
 *        ("ok", "max_iter", "no_progress", "not_finite"), converged, info
 *        ("xtol", "gtol", "ftol" or nil), rcond}
 *   sl.fit_c.linear{x =, y =, weights =} → {params, cov (scaled as above),
 *     rss, dof, fitted, rank}: the exact least-squares solution by SVD.
 *   sl.fit_c.norm_p(z), norm_q(z), norm_pinv(p): the standard normal's lower
 *     and upper tails and quantile.
 *
 * A model function runs under lua_pcall inside GSL's callback, so an error in
 * it never unwinds through GSL's frames: the callback reports failure, the
 * solver loop stops, GSL's memory is freed, and only then is the error raised
 * (as "sl.fit_c.nls: model: <message>"). GSL's default error handler aborts
 * the process; it is switched off for the duration of each call and restored
 * after, so a host's own GSL policy is left as it was. */
#include "l_fit.h"
#include "l_tensor.h"

#include <gsl/gsl_blas.h>
#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_multifit.h>
#include <gsl/gsl_multifit_nlinear.h>
#include <math.h>
#include <string.h>

enum fit_model { MODEL_LINEAR, MODEL_POWER, MODEL_POWER0, MODEL_LUA };

typedef struct fit_problem {
    lua_State *L;
    enum fit_model model;
    size_t n, p, k;    /* points, parameters, predictors per row (built-in models) */
    const double *x;   /* n×k, row-major (built-in models) */
    const double *y;   /* n */
    int fn_idx;        /* stack index of the model function (MODEL_LUA) */
    int rows_idx;      /* stack index of the x table (MODEL_LUA) */
    int err_idx;       /* stack slot that receives a model error */
    int failed;        /* the model function raised an error */
    /* scratch for one Lua evaluation, set before each protected call */
    const gsl_vector *at;
    gsl_vector *out;
} fit_problem;

/* ---- reading arguments ------------------------------------------------------------- */

/* A userdata of n doubles left on the stack (collected with it on error). */
static double *new_doubles(lua_State *L, size_t n)
{
    return lua_newuserdatauv(L, sizeof(double) * (n ? n : 1), 0);
}

/* Reads the array field `key` of table t (numbers) into a new userdata. */
static double *read_vector(lua_State *L, int t, const char *key, size_t *n_out, const char *what, int required)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required)
            sl__lua_error(L, "%s: field '%s' is required", what, key);
        *n_out = 0;
        return NULL;
    }
    if (!lua_istable(L, -1))
        sl__lua_error(L, "%s: field '%s' must be an array of numbers, found %s", what, key, luaL_typename(L, -1));
    size_t n = (size_t)lua_rawlen(L, -1);
    double *v = new_doubles(L, n);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -2, (lua_Integer)i + 1);
        int ok = 0;
        double d = lua_tonumberx(L, -1, &ok);
        if (!ok || lua_type(L, -1) != LUA_TNUMBER)
            sl__lua_error(L, "%s: %s[%d] must be a number, found %s", what, key, (int)i + 1, luaL_typename(L, -1));
        if (!isfinite(d))
            sl__lua_error(L, "%s: %s[%d] is not finite", what, key, (int)i + 1);
        v[i] = d;
        lua_pop(L, 1);
    }
    lua_remove(L, -2); /* the table; the userdata stays */
    *n_out = n;
    return v;
}

/* Reads x (n rows, each a table of k numbers) into a userdata, row-major. */
static double *read_matrix(lua_State *L, int t, size_t n, size_t *k_out, const char *what)
{
    lua_getfield(L, t, "x");
    if (!lua_istable(L, -1))
        sl__lua_error(L, "%s: field 'x' must be an array of rows, found %s", what, luaL_typename(L, -1));
    if ((size_t)lua_rawlen(L, -1) != n)
        sl__lua_error(L, "%s: x has %d rows and y has %d values", what, (int)lua_rawlen(L, -1), (int)n);
    size_t k = 0;
    if (n > 0 && lua_rawgeti(L, -1, 1) == LUA_TTABLE)
        k = (size_t)lua_rawlen(L, -1);
    lua_pop(L, 1);
    double *m = new_doubles(L, n * k);
    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, -2, (lua_Integer)i + 1) != LUA_TTABLE || (size_t)lua_rawlen(L, -1) != k || k == 0)
            sl__lua_error(L, "%s: x[%d] must be a row of %d numbers like x[1], found %s", what, (int)i + 1, (int)k,
                          lua_istable(L, -1) ? lua_pushfstring(L, "%d values", (int)lua_rawlen(L, -1))
                                             : luaL_typename(L, -1));
        for (size_t j = 0; j < k; j++) {
            int ok = lua_rawgeti(L, -1, (lua_Integer)j + 1) == LUA_TNUMBER;
            m[i * k + j] = lua_tonumber(L, -1);
            if (!ok || !isfinite(m[i * k + j]))
                sl__lua_error(L, "%s: x[%d][%d] must be a finite number, found %s", what, (int)i + 1, (int)j + 1,
                              ok ? "a non-finite one" : luaL_typename(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_remove(L, -2);
    *k_out = k;
    return m;
}

static double opt_number(lua_State *L, int t, const char *key, double def, double lo, double hi, const char *what)
{
    lua_getfield(L, t, key);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            sl__lua_error(L, "%s: field '%s' must be a number, found %s", what, key, luaL_typename(L, -1));
        v = lua_tonumber(L, -1);
        if (!(v >= lo && v <= hi))
            sl__lua_error(L, "%s: field '%s' must be in [%f, %f], found %f", what, key, lo, hi, v);
    }
    lua_pop(L, 1);
    return v;
}

/* Checks the weights: n of them, none negative. */
static void check_weights(lua_State *L, const double *w, size_t n_w, size_t n, const char *what)
{
    if (!w)
        return;
    if (n_w != n)
        sl__lua_error(L, "%s: weights has %d values and y has %d", what, (int)n_w, (int)n);
    for (size_t i = 0; i < n; i++)
        if (w[i] < 0)
            sl__lua_error(L, "%s: weights[%d] is negative (%f)", what, (int)i + 1, w[i]);
}

/* ---- model evaluation --------------------------------------------------------------- */

/* Runs under lua_pcall with (fp, model, rows): out[i] = model(params, rows[i]). */
static int lua_eval_rows(lua_State *L)
{
    fit_problem *fp = lua_touserdata(L, 1);
    lua_createtable(L, (int)fp->p, 0);
    for (size_t j = 0; j < fp->p; j++) {
        lua_pushnumber(L, gsl_vector_get(fp->at, j));
        lua_rawseti(L, -2, (lua_Integer)j + 1);
    }
    int params = lua_gettop(L);
    for (size_t i = 0; i < fp->n; i++) {
        lua_pushvalue(L, 2);
        lua_pushvalue(L, params);
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        lua_call(L, 2, 1);
        int ok = 0;
        double v = lua_tonumberx(L, -1, &ok);
        if (!ok || lua_type(L, -1) != LUA_TNUMBER)
            return luaL_error(L, "row %d: returned %s, expected a number", (int)i + 1, luaL_typename(L, -1));
        gsl_vector_set(fp->out, i, v);
        lua_pop(L, 1);
    }
    return 0;
}

/* out[i] = model value at x[i] for parameters at. Returns GSL_SUCCESS or
 * GSL_EBADFUNC (the model raised an error; its message is in err_idx). */
static int model_values(fit_problem *fp, const gsl_vector *at, gsl_vector *out)
{
    if (fp->failed)
        return GSL_EBADFUNC;
    if (fp->model == MODEL_LUA) {
        lua_State *L = fp->L;
        if (!lua_checkstack(L, 8)) {
            fp->failed = 1;
            return GSL_EBADFUNC;
        }
        fp->at = at;
        fp->out = out;
        lua_pushcfunction(L, lua_eval_rows);
        lua_pushlightuserdata(L, fp);
        lua_pushvalue(L, fp->fn_idx);
        lua_pushvalue(L, fp->rows_idx);
        if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
            lua_replace(L, fp->err_idx);
            fp->failed = 1;
            return GSL_EBADFUNC;
        }
        return GSL_SUCCESS;
    }
    for (size_t i = 0; i < fp->n; i++) {
        const double *xi = fp->x + i * fp->k;
        double v = 0;
        if (fp->model == MODEL_LINEAR) {
            for (size_t j = 0; j < fp->p; j++)
                v += gsl_vector_get(at, j) * xi[j];
        } else {
            v = gsl_vector_get(at, 0) * pow(xi[0], gsl_vector_get(at, 1));
            if (fp->model == MODEL_POWER)
                v += gsl_vector_get(at, 2);
        }
        gsl_vector_set(out, i, v);
    }
    return GSL_SUCCESS;
}

/* GSL's residual callback: f = model − y (GSL applies the weights). */
static int cb_f(const gsl_vector *at, void *params, gsl_vector *f)
{
    fit_problem *fp = params;
    int s = model_values(fp, at, f);
    if (s != GSL_SUCCESS)
        return s;
    for (size_t i = 0; i < fp->n; i++)
        gsl_vector_set(f, i, gsl_vector_get(f, i) - fp->y[i]);
    return GSL_SUCCESS;
}

/* The analytic Jacobian of the built-in models (unweighted; GSL applies the weights). */
static int cb_df(const gsl_vector *at, void *params, gsl_matrix *J)
{
    fit_problem *fp = params;
    for (size_t i = 0; i < fp->n; i++) {
        const double *xi = fp->x + i * fp->k;
        if (fp->model == MODEL_LINEAR) {
            for (size_t j = 0; j < fp->p; j++)
                gsl_matrix_set(J, i, j, xi[j]);
        } else {
            double a = gsl_vector_get(at, 0), xb = pow(xi[0], gsl_vector_get(at, 1));
            gsl_matrix_set(J, i, 0, xb);
            gsl_matrix_set(J, i, 1, a * xb * log(xi[0]));
            if (fp->model == MODEL_POWER)
                gsl_matrix_set(J, i, 2, 1.0);
        }
    }
    return GSL_SUCCESS;
}

/* ---- results ------------------------------------------------------------------------ */

typedef struct fit_out {
    double *params, *cov, *fitted;
    double rss, rcond;
    size_t iterations, rank;
    const char *status, *info;
} fit_out;

static void push_array(lua_State *L, const double *v, size_t n)
{
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static void set_number(lua_State *L, const char *key, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, key);
}

static void set_integer(lua_State *L, const char *key, size_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, key);
}

static void push_result(lua_State *L, const fit_out *o, size_t n, size_t p, int nonlinear)
{
    lua_createtable(L, 0, 12);
    push_array(L, o->params, p);
    lua_setfield(L, -2, "params");
    lua_createtable(L, (int)p, 0);
    for (size_t i = 0; i < p; i++) {
        push_array(L, o->cov + i * p, p);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "cov");
    push_array(L, o->fitted, n);
    lua_setfield(L, -2, "fitted");
    set_number(L, "rss", o->rss);
    set_integer(L, "dof", n - p);
    if (!nonlinear) {
        set_integer(L, "rank", o->rank);
        return;
    }
    set_integer(L, "iterations", o->iterations);
    set_number(L, "rcond", o->rcond);
    lua_pushstring(L, o->status);
    lua_setfield(L, -2, "status");
    lua_pushboolean(L, strcmp(o->status, "ok") == 0);
    lua_setfield(L, -2, "converged");
    lua_pushstring(L, o->info); /* nil when NULL */
    lua_setfield(L, -2, "info");
}

/* Scales a p×p covariance by rss/dof (dof > 0), or fills it with NaN. */
static void scale_cov(double *cov, size_t p, double rss, size_t dof)
{
    double s2 = dof > 0 ? rss / (double)dof : NAN;
    for (size_t i = 0; i < p * p; i++)
        cov[i] *= s2;
}

/* ---- sl.fit_c.nls ------------------------------------------------------------------- */

/* The solver loop of gsl_multifit_nlinear_driver, written out so that a
 * failing model evaluation stops it (the driver overwrites that status with
 * its convergence test). Returns 0 or GSL_EBADFUNC. */
static int solve(fit_problem *fp, gsl_multifit_nlinear_workspace *w, size_t max_iter, double xtol, double gtol,
                 double ftol, fit_out *o)
{
    o->status = "max_iter";
    o->info = NULL;
    size_t iter = 0;
    while (iter < max_iter) {
        int s = gsl_multifit_nlinear_iterate(w);
        if (fp->failed)
            return GSL_EBADFUNC;
        /* No acceptable step on the first iteration: more will not help. A
         * later one means the damping was reset, so go on (as the driver does). */
        if (s == GSL_ENOPROG && iter == 0) {
            o->status = "no_progress";
            break;
        }
        if (s != GSL_SUCCESS && s != GSL_ENOPROG) {
            o->status = "no_progress";
            o->info = gsl_strerror(s);
            break;
        }
        iter++;
        int info = 0;
        s = gsl_multifit_nlinear_test(xtol, gtol, ftol, &info, w);
        if (s == GSL_SUCCESS || s == GSL_ETOLF || s == GSL_ETOLX || s == GSL_ETOLG) {
            o->status = "ok";
            o->info = s == GSL_ETOLF || info == 3 ? "ftol" : s == GSL_ETOLG || info == 2 ? "gtol" : "xtol";
            break;
        }
    }
    o->iterations = iter;
    return 0;
}

/* Reads the model field: a function (rows passed as they are) or a built-in
 * name with its predictors read into fp->x and checked against p. */
static void read_model(lua_State *L, fit_problem *fp, const char *what)
{
    lua_getfield(L, 1, "model");
    if (lua_isfunction(L, -1)) {
        fp->model = MODEL_LUA;
        fp->fn_idx = lua_gettop(L);
        lua_getfield(L, 1, "x");
        if (!lua_istable(L, -1) || (size_t)lua_rawlen(L, -1) != fp->n)
            sl__lua_error(L, "%s: x must be an array of %d rows (one per y), found %s", what, (int)fp->n,
                          lua_istable(L, -1) ? lua_pushfstring(L, "%d rows", (int)lua_rawlen(L, -1))
                                             : luaL_typename(L, -1));
        fp->rows_idx = lua_gettop(L);
        return;
    }
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (!name)
        sl__lua_error(L, "%s: field 'model' must be \"linear\", \"power\", \"power0\" or a function, found %s", what,
                      luaL_typename(L, -1));
    if (strcmp(name, "linear") == 0)
        fp->model = MODEL_LINEAR;
    else if (strcmp(name, "power") == 0)
        fp->model = MODEL_POWER;
    else if (strcmp(name, "power0") == 0)
        fp->model = MODEL_POWER0;
    else
        sl__lua_error(L, "%s: unknown model '%s' (expected linear, power, power0 or a function)", what, name);
    fp->x = read_matrix(L, 1, fp->n, &fp->k, what);
    size_t want = fp->model == MODEL_LINEAR ? fp->k : fp->model == MODEL_POWER ? 3 : 2;
    if (fp->p != want)
        sl__lua_error(L, "%s: model '%s' with %d predictors has %d parameters, p0 has %d", what, name, (int)fp->k,
                      (int)want, (int)fp->p);
    if (fp->model != MODEL_LINEAR && fp->k != 1)
        sl__lua_error(L, "%s: model '%s' takes one predictor per row, found %d", what, name, (int)fp->k);
    for (size_t i = 0; fp->model != MODEL_LINEAR && i < fp->n; i++)
        if (!(fp->x[i] > 0))
            sl__lua_error(L, "%s: model '%s' needs x > 0, x[%d] is %f", what, name, (int)i + 1, fp->x[i]);
}

typedef struct nls_opts { size_t max_iter; double xtol, gtol, ftol; } nls_opts;

/* Runs the trust-region solver from p0 and fills o. Calls nothing that can
 * raise a Lua error. Returns NULL, or a message when GSL failed (a failing
 * model function instead sets fp->failed). */
static const char *nls_run(fit_problem *fp, double *p0, const double *wts, const nls_opts *opt, fit_out *o)
{
    size_t n = fp->n, p = fp->p;
    gsl_error_handler_t *saved = gsl_set_error_handler_off();
    gsl_multifit_nlinear_fdf fdf;
    memset(&fdf, 0, sizeof fdf);
    fdf.f = cb_f;
    fdf.df = fp->model == MODEL_LUA ? NULL : cb_df; /* NULL: forward differences */
    fdf.n = n;
    fdf.p = p;
    fdf.params = fp;
    gsl_multifit_nlinear_parameters par = gsl_multifit_nlinear_default_parameters();
    gsl_multifit_nlinear_workspace *w = gsl_multifit_nlinear_alloc(gsl_multifit_nlinear_trust, &par, n, p);
    gsl_matrix *covar = gsl_matrix_alloc(p, p);
    const char *err = !w || !covar ? "out of memory" : NULL;
    int s = GSL_SUCCESS;
    if (!err) {
        gsl_vector_view x0 = gsl_vector_view_array(p0, p);
        if (wts) {
            gsl_vector_const_view wv = gsl_vector_const_view_array(wts, n);
            s = gsl_multifit_nlinear_winit(&x0.vector, &wv.vector, &fdf, w);
        } else {
            s = gsl_multifit_nlinear_init(&x0.vector, &fdf, w);
        }
        if (s == GSL_SUCCESS && !fp->failed)
            s = solve(fp, w, opt->max_iter, opt->xtol, opt->gtol, opt->ftol, o);
        if (s != GSL_SUCCESS && !fp->failed)
            err = gsl_strerror(s);
    }
    if (!err && !fp->failed) {
        gsl_vector *at = gsl_multifit_nlinear_position(w);
        gsl_vector *f = gsl_multifit_nlinear_residual(w);
        gsl_blas_ddot(f, f, &o->rss);
        gsl_multifit_nlinear_covar(gsl_multifit_nlinear_jac(w), 0.0, covar);
        gsl_multifit_nlinear_rcond(&o->rcond, w);
        int finite = isfinite(o->rss);
        for (size_t j = 0; j < p; j++) {
            o->params[j] = gsl_vector_get(at, j);
            finite = finite && isfinite(o->params[j]);
            for (size_t i = 0; i < p; i++)
                o->cov[j * p + i] = gsl_matrix_get(covar, j, i);
        }
        if (!finite)
            o->status = "not_finite";
        gsl_vector_view fv = gsl_vector_view_array(o->fitted, n);
        model_values(fp, at, &fv.vector);
    }
    gsl_matrix_free(covar);
    gsl_multifit_nlinear_free(w);
    gsl_set_error_handler(saved);
    return err;
}

static const char *const nls_keys[] = {"x", "y", "model", "p0", "weights", "max_iter", "xtol", "gtol", "ftol", NULL};

static int l_nls(lua_State *L)
{
    static const char what[] = "sl.fit_c.nls";
    luaL_checktype(L, 1, LUA_TTABLE);
    sl__lua_check_keys(L, 1, what, nls_keys);
    lua_settop(L, 1);
    luaL_checkstack(L, 24, what);
    fit_problem fp;
    memset(&fp, 0, sizeof fp);
    fp.L = L;
    size_t n_w;
    fp.y = read_vector(L, 1, "y", &fp.n, what, 1);
    double *p0 = read_vector(L, 1, "p0", &fp.p, what, 1);
    double *wts = read_vector(L, 1, "weights", &n_w, what, 0);
    check_weights(L, wts, n_w, fp.n, what);
    if (fp.p == 0)
        return sl__lua_error(L, "%s: p0 is empty (give a starting value per parameter)", what);
    if (fp.n < fp.p)
        return sl__lua_error(L, "%s: %d points cannot determine %d parameters", what, (int)fp.n, (int)fp.p);
    read_model(L, &fp, what);
    nls_opts opt = {(size_t)opt_number(L, 1, "max_iter", 500, 1, 1e6, what),
                    opt_number(L, 1, "xtol", 1e-10, 0, 1, what), opt_number(L, 1, "gtol", 1e-10, 0, 1, what),
                    opt_number(L, 1, "ftol", 0, 0, 1, what)};
    /* Outputs live in userdata allocated before GSL's memory, so nothing
     * between the GSL allocation and its release can raise. */
    fit_out o;
    memset(&o, 0, sizeof o);
    o.params = new_doubles(L, fp.p);
    o.cov = new_doubles(L, fp.p * fp.p);
    o.fitted = new_doubles(L, fp.n);
    lua_pushnil(L);
    fp.err_idx = lua_gettop(L);
    const char *err = nls_run(&fp, p0, wts, &opt, &o);
    if (fp.failed) {
        lua_pushvalue(L, fp.err_idx);
        return sl__lua_error(L, "%s: model: %s", what,
                             lua_isstring(L, -1) ? lua_tostring(L, -1) : "error object is not a string");
    }
    if (err)
        return sl__lua_error(L, "%s: %s", what, err);
    scale_cov(o.cov, fp.p, o.rss, fp.n - fp.p);
    push_result(L, &o, fp.n, fp.p, 1);
    return 1;
}

/* ---- sl.fit_c.linear ---------------------------------------------------------------- */

static int l_linear(lua_State *L)
{
    static const char what[] = "sl.fit_c.linear";
    static const char *const keys[] = {"x", "y", "weights", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    sl__lua_check_keys(L, 1, what, keys);
    lua_settop(L, 1);
    luaL_checkstack(L, 16, what);
    size_t n, k, n_w;
    const double *y = read_vector(L, 1, "y", &n, what, 1);
    double *wts = read_vector(L, 1, "weights", &n_w, what, 0);
    check_weights(L, wts, n_w, n, what);
    if (n == 0)
        return sl__lua_error(L, "%s: y is empty", what);
    double *x = read_matrix(L, 1, n, &k, what);
    if (n < k)
        return sl__lua_error(L, "%s: %d points cannot determine %d parameters", what, (int)n, (int)k);
    fit_out o;
    memset(&o, 0, sizeof o);
    o.params = new_doubles(L, k);
    o.cov = new_doubles(L, k * k);
    o.fitted = new_doubles(L, n);

    gsl_error_handler_t *saved = gsl_set_error_handler_off();
    gsl_matrix_view X = gsl_matrix_view_array(x, n, k);
    gsl_vector_const_view Y = gsl_vector_const_view_array(y, n);
    gsl_vector_view c = gsl_vector_view_array(o.params, k);
    gsl_matrix_view cov = gsl_matrix_view_array(o.cov, k, k);
    gsl_vector_view fitted = gsl_vector_view_array(o.fitted, n);
    gsl_multifit_linear_workspace *w = gsl_multifit_linear_alloc(n, k);
    int s = GSL_ENOMEM;
    if (w) {
        if (wts) {
            gsl_vector_const_view W = gsl_vector_const_view_array(wts, n);
            s = gsl_multifit_wlinear_tsvd(&X.matrix, &W.vector, &Y.vector, GSL_DBL_EPSILON, &c.vector, &cov.matrix,
                                          &o.rss, &o.rank, w);
        } else {
            s = gsl_multifit_linear_tsvd(&X.matrix, &Y.vector, GSL_DBL_EPSILON, &c.vector, &cov.matrix, &o.rss,
                                         &o.rank, w);
        }
        if (s == GSL_SUCCESS)
            gsl_blas_dgemv(CblasNoTrans, 1.0, &X.matrix, &c.vector, 0.0, &fitted.vector);
    }
    gsl_multifit_linear_free(w);
    gsl_set_error_handler(saved);
    if (s != GSL_SUCCESS)
        return sl__lua_error(L, "%s: %s", what, gsl_strerror(s));
    /* gsl_multifit_linear already scales by rss/dof; the weighted form does not. */
    if (wts)
        scale_cov(o.cov, k, o.rss, n - k);
    else if (n == k)
        scale_cov(o.cov, k, NAN, 1);
    push_result(L, &o, n, k, 0);
    return 1;
}

/* ---- distributions -------------------------------------------------------------------- */

static int l_norm_p(lua_State *L)
{
    lua_pushnumber(L, gsl_cdf_ugaussian_P(luaL_checknumber(L, 1)));
    return 1;
}

static int l_norm_q(lua_State *L)
{
    lua_pushnumber(L, gsl_cdf_ugaussian_Q(luaL_checknumber(L, 1)));
    return 1;
}

static int l_norm_pinv(lua_State *L)
{
    double p = luaL_checknumber(L, 1);
    luaL_argcheck(L, p > 0 && p < 1, 1, "a probability in (0, 1)");
    lua_pushnumber(L, gsl_cdf_ugaussian_Pinv(p));
    return 1;
}

void sl__lua_open_fit(lua_State *L)
{
    static const luaL_Reg fns[] = {{"nls", l_nls},       {"linear", l_linear},       {"norm_p", l_norm_p},
                                   {"norm_q", l_norm_q}, {"norm_pinv", l_norm_pinv}, {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "fit_c");
}
